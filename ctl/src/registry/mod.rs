//! `oxcdctl registry`: Kubernetes' objects under `/registry` as an operator wants to read them,
//! straight from the store, with no running kube-apiserver.
//!
//! - `ls` discovers resources from the keys themselves (so custom resources and unknown
//!   built-ins show up) with keys-only probes that hop from one resource prefix to the next,
//!   then pages through each resource at the same revision to count objects and bytes.
//! - `get` decodes one object (protobuf envelope or JSON) into kubectl's JSON or YAML.
//! - `history` walks an object back through its retained revisions: it reads the key at its
//!   `mod_revision - 1`, which yields the previous version, until version 1 (creation) or the
//!   compaction point, and shows for each revision the changed fields relative to the one before
//!   (leaf paths with old → new values): what an operator looks for when asking "who changed
//!   what when".

mod keys;
mod render;
mod store;

use oxcd_kube::{envelope, object};
use serde_json::Value;

use crate::args::prefix_range_end;
use crate::client::Connection;
use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;
use envelope::Envelope;
use keys::Resource;
use store::Store;

#[derive(clap::Args, Debug)]
pub struct RegistryCommand {
    /// key prefix kube-apiserver stores objects under (its --etcd-prefix)
    #[arg(long, global = true, default_value = "/registry")]
    etcd_prefix: String,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Lists resources with object counts and sizes, or one resource's objects
    Ls {
        /// resource (pods, po, nodes, deploy, widgets.example.com, …); all when omitted
        resource: Option<String>,
        /// only this namespace's objects (default: every namespace)
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Prints one object decoded as `kubectl get -o json|yaml` shows it
    Get {
        /// resource (pods, po, svc, deploy, widgets.example.com, …)
        resource: String,
        /// object name
        name: String,
        /// namespace (namespaced resources default to "default")
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// output format
        #[arg(short = 'o', long, value_enum, default_value = "json")]
        output: render::Format,
        /// read the object as of this store revision
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
    /// Lists the retained revisions of one object and what changed in each
    History {
        /// resource (pods, po, svc, deploy, widgets.example.com, …)
        resource: String,
        /// object name
        name: String,
        /// namespace (namespaced resources default to "default")
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
}

pub async fn run(global: &GlobalFlags, command: RegistryCommand) -> CtlResult {
    let connection = Connection::open(global).await?;
    let mut store = Store::new(&connection);
    let root = command.etcd_prefix.trim_end_matches('/');
    let text = match command.action {
        Action::Ls { resource: None, .. } => list_resources(&mut store, root).await?,
        Action::Ls {
            resource: Some(resource),
            namespace,
        } => {
            let resource = Resource::named(&resource);
            list_objects(&mut store, root, &resource, namespace.as_deref()).await?
        }
        Action::Get {
            resource,
            name,
            namespace,
            output,
            rev,
        } => {
            let key = Resource::named(&resource).object_key(root, namespace.as_deref(), &name);
            let kv = store
                .get(key.as_bytes(), rev)
                .await?
                .ok_or_else(|| not_found(&resource, &name, &key))?;
            let (object, note) = readable(&kv.value)
                .map_err(|why| Failure::new(ExitCode::Error, format!("{key}: {why}")))?;
            if let Some(note) = note {
                eprintln!("{note}");
            }
            render::document(&object, output)?
        }
        Action::History {
            resource,
            name,
            namespace,
        } => {
            let key = Resource::named(&resource).object_key(root, namespace.as_deref(), &name);
            history(&mut store, &key)
                .await?
                .ok_or_else(|| not_found(&resource, &name, &key))?
        }
    };
    print!("{text}");
    Ok(())
}

fn not_found(resource: &str, name: &str, key: &str) -> Failure {
    Failure::new(
        ExitCode::Error,
        format!("{resource} {name:?} not found (no key {key})"),
    )
}

/// Every resource under the root: one keys-only probe finds the next resource's first key, its
/// whole prefix is then read (at the revision of the first probe) for counts and sizes, and the
/// next probe starts after that prefix.
async fn list_resources(store: &mut Store, root: &str) -> CtlResult<String> {
    let root_prefix = format!("{root}/");
    let end = prefix_range_end(root_prefix.as_bytes());
    let (mut from, mut revision) = (root_prefix.clone().into_bytes(), 0);
    let mut rows = Vec::new();
    let (mut total_objects, mut total_bytes) = (0u64, 0u64);
    loop {
        let (first, read_at) = store.first_key(&from, &end, revision).await?;
        revision = read_at;
        let Some(first) = first else { break };
        let path = keys::resource_path_of(root, &first)
            .unwrap_or_else(|| String::from_utf8_lossy(&first[root_prefix.len()..]).into_owned());
        let prefix = format!("{root_prefix}{path}");
        let (mut objects, mut bytes) = (0u64, 0u64);
        if path.ends_with('/') {
            store
                .scan(prefix.as_bytes(), revision, |kv| {
                    objects += 1;
                    bytes += kv.value.len() as u64;
                })
                .await?;
            from = prefix_range_end(prefix.as_bytes());
        } else {
            // A key directly under the root: its own one-object "resource".
            let kv = store.get(&first, revision).await?;
            objects = 1;
            bytes = kv.map_or(0, |kv| kv.value.len() as u64);
            from = first;
            from.push(0);
        }
        total_objects += objects;
        total_bytes += bytes;
        let resource = Resource::stored_at(&path);
        rows.push(vec![
            resource.name,
            prefix,
            objects.to_string(),
            render::bytes(bytes),
        ]);
    }
    rows.push(vec![
        "TOTAL".into(),
        String::new(),
        total_objects.to_string(),
        render::bytes(total_bytes),
    ]);
    Ok(render::table(
        &["RESOURCE", "KEY PREFIX", "OBJECTS", "SIZE"],
        &rows,
    ))
}

async fn list_objects(
    store: &mut Store,
    root: &str,
    resource: &Resource,
    namespace: Option<&str>,
) -> CtlResult<String> {
    let resource_prefix = format!("{root}/{}", resource.path);
    let mut rows = Vec::new();
    store
        .scan(resource.list_prefix(root, namespace).as_bytes(), 0, |kv| {
            let key = String::from_utf8_lossy(&kv.key);
            let (namespace, name) = keys::namespace_and_name(&resource_prefix, &key);
            let namespace = if namespace.is_empty() { "-" } else { namespace };
            rows.push(vec![
                namespace.to_string(),
                name.to_string(),
                kind(&kv.value),
                kv.value.len().to_string(),
                kv.mod_revision.to_string(),
            ]);
        })
        .await?;
    Ok(render::table(
        &["NAMESPACE", "NAME", "KIND", "SIZE", "MOD REVISION"],
        &rows,
    ))
}

/// The kind column of `ls`: what the value says it is, or how it is stored when it cannot say.
fn kind(value: &[u8]) -> String {
    match envelope::classify(value) {
        Envelope::Protobuf(message) => {
            object::type_meta(message).map_or_else(|_| "(undecodable)".into(), |t| t.kind)
        }
        Envelope::Json(json) => json
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("(json)")
            .to_string(),
        Envelope::Encrypted(encryption) => format!(
            "(encrypted: {} {})",
            encryption.provider, encryption.key_name
        ),
        Envelope::Opaque => "(opaque)".into(),
    }
}

/// Why a stored value cannot be shown as an object.
enum Unreadable {
    Encrypted(envelope::Encryption),
    NotAnObject(usize),
    Undecodable(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Encrypted(encryption) => write!(
                f,
                "encrypted at rest ({encryption}); it cannot be decoded without that key"
            ),
            Unreadable::NotAnObject(size) => write!(
                f,
                "not a Kubernetes object ({size} bytes, neither protobuf nor JSON)"
            ),
            Unreadable::Undecodable(why) => f.write_str(why),
        }
    }
}

/// The object as kubectl would show it, plus a note when only part of it could be decoded.
fn readable(value: &[u8]) -> Result<(Value, Option<String>), Unreadable> {
    match envelope::classify(value) {
        Envelope::Protobuf(message) => {
            let decoded = object::decode(message).map_err(Unreadable::Undecodable)?;
            Ok((decoded.object, decoded.note))
        }
        Envelope::Json(json) => Ok((json, None)),
        Envelope::Encrypted(encryption) => Err(Unreadable::Encrypted(encryption)),
        Envelope::Opaque => Err(Unreadable::NotAnObject(value.len())),
    }
}

/// The history table, newest first, or `None` when the key does not exist now.
async fn history(store: &mut Store, key: &str) -> CtlResult<Option<String>> {
    let Some(latest) = store.get(key.as_bytes(), 0).await? else {
        return Ok(None);
    };
    let mut versions = vec![latest];
    let mut compacted = false;
    while let Some(oldest) = versions.last().filter(|kv| kv.version > 1) {
        match store.get(key.as_bytes(), oldest.mod_revision - 1).await {
            Ok(Some(previous)) => versions.push(previous),
            Ok(None) => break,
            Err(failure) if failure.message == store::COMPACTED => {
                compacted = true;
                break;
            }
            Err(failure) => return Err(failure),
        }
    }
    let contents: Vec<Result<Value, Unreadable>> = versions
        .iter()
        .map(|kv| readable(&kv.value).map(|(object, _)| object))
        .collect();
    let mut rows = Vec::new();
    for (index, kv) in versions.iter().enumerate() {
        let summary = match (&contents[index], contents.get(index + 1)) {
            (Err(why), _) => vec![why.to_string()],
            (Ok(_), None) if kv.version == 1 => vec!["created".to_string()],
            (Ok(_), None) if compacted => vec!["(earlier revisions compacted)".to_string()],
            (Ok(_), None) => vec!["(earliest retained revision)".to_string()],
            (Ok(_), Some(Err(_))) => vec!["(previous revision unreadable)".to_string()],
            (Ok(newer), Some(Ok(older))) => match render::changes(older, newer) {
                lines if lines.is_empty() => vec!["(no change in content)".to_string()],
                lines => lines,
            },
        };
        for (line, change) in summary.into_iter().enumerate() {
            let cells = if line == 0 {
                [
                    kv.mod_revision.to_string(),
                    kv.version.to_string(),
                    kv.value.len().to_string(),
                ]
            } else {
                Default::default()
            };
            rows.push(cells.into_iter().chain([change]).collect());
        }
    }
    Ok(Some(render::table(
        &["REVISION", "VERSION", "SIZE", "CHANGES"],
        &rows,
    )))
}
