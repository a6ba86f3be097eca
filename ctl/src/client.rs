//! One connection to the cluster shared by a command's calls, with the generated gRPC clients.
//!
//! It behaves like etcd's Go client as etcdctl configures it: dialing never blocks, every call
//! waits for a usable connection until its deadline (so an unreachable endpoint fails with
//! `context deadline exceeded`), and `--user` trades credentials for a token sent with every call.

use std::future::Future;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use oxcd_proto::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
    AuthenticateRequest,
};

use crate::failure::{CtlResult, ExitCode, Failure};
use crate::global::GlobalFlags;

/// The transport every client uses: the channel plus the auth token interceptor.
pub type Transport = InterceptedService<Channel, AuthToken>;

/// Adds the `token` metadata etcd expects once a user has authenticated.
#[derive(Clone, Default)]
pub struct AuthToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for AuthToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("token", token.clone());
        }
        Ok(request)
    }
}

/// A failed call, as the Go client words it; commands choose the exit code.
#[derive(Debug)]
pub struct RpcError(pub String);

impl RpcError {
    pub fn exit(self, code: ExitCode) -> Failure {
        Failure::new(code, self.0)
    }

    pub fn deadline() -> RpcError {
        RpcError("context deadline exceeded".into())
    }

    /// etcd's own errors print as their description ("etcdserver: ..."); anything else as
    /// grpc-go formats a status.
    pub fn from_status(status: &Status) -> RpcError {
        let message = status.message();
        if message.starts_with("etcdserver: ") || message.starts_with("mvcc: ") {
            return RpcError(message.to_string());
        }
        if status.code() == Code::DeadlineExceeded {
            return RpcError::deadline();
        }
        let code = match status.code() {
            Code::Cancelled => "Canceled".to_string(),
            other => format!("{other:?}"),
        };
        RpcError(format!("rpc error: code = {code} desc = {message}"))
    }
}

impl From<RpcError> for Failure {
    fn from(e: RpcError) -> Failure {
        e.exit(ExitCode::Error)
    }
}

#[derive(Clone)]
pub struct Connection {
    channel: Channel,
    token: AuthToken,
    global: GlobalFlags,
    pub command_timeout: Duration,
}

impl Connection {
    /// Connects to the `--endpoints` (lazily, like the Go client) and authenticates `--user`.
    pub async fn open(global: &GlobalFlags) -> CtlResult<Connection> {
        Connection::to_endpoints(global, &global.endpoints).await
    }

    /// A connection with the same settings to just `endpoint`, for per-member commands.
    pub async fn to_endpoint(&self, endpoint: &str) -> CtlResult<Connection> {
        Connection::to_endpoints(&self.global, &[endpoint.to_string()]).await
    }

    pub fn endpoints(&self) -> &[String] {
        &self.global.endpoints
    }

    async fn to_endpoints(global: &GlobalFlags, endpoints: &[String]) -> CtlResult<Connection> {
        let tls = tls_config(global)?;
        let mut dials = Vec::new();
        for endpoint in endpoints {
            dials.push(dial(endpoint, tls.as_ref(), global)?);
        }
        let channel = match (dials.len(), skip_verify_config(global, tls.is_some())?) {
            (0, _) => return Err(Failure::new(ExitCode::BadConnection, "no endpoints")),
            // Unverified TLS dials the first endpoint through its own connector.
            (_, Some(config)) => dials
                .remove(0)
                .connect_with_connector_lazy(tower::service_fn(move |uri| {
                    crate::insecure_tls::connect(config.clone(), uri)
                })),
            (1, None) => dials.remove(0).connect_lazy(),
            (_, None) => Channel::balance_list(dials.into_iter()),
        };
        let mut connection = Connection {
            channel,
            token: AuthToken::default(),
            global: global.clone(),
            command_timeout: global.command_timeout,
        };
        if let Some((name, password)) = global.credentials()? {
            connection.authenticate(name, password).await?;
        }
        Ok(connection)
    }

    async fn authenticate(&mut self, name: String, password: String) -> CtlResult {
        let auth = self.auth();
        let request = AuthenticateRequest { name, password };
        let reply = self
            .unary(Some(self.global.dial_timeout), || {
                let mut auth = auth.clone();
                let request = request.clone();
                async move { auth.authenticate(request).await }
            })
            .await;
        match reply {
            Ok(reply) => {
                let token = MetadataValue::try_from(reply.token.as_str()).map_err(|e| {
                    Failure::new(ExitCode::BadConnection, format!("bad auth token: {e}"))
                })?;
                self.token = AuthToken(Some(token));
                Ok(())
            }
            // The Go client carries on without a token when the cluster has auth disabled.
            Err(e) if e.0 == "etcdserver: authentication is not enabled" => Ok(()),
            Err(e) => Err(e.exit(ExitCode::BadConnection)),
        }
    }

    /// Runs one call with `deadline` (the command timeout when `None` is not wanted, pass it),
    /// retrying while no connection can be made, as grpc-go's wait-for-ready calls do.
    pub async fn unary<T, F, Fut>(&self, deadline: Option<Duration>, call: F) -> Result<T, RpcError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match deadline {
            Some(limit) => tokio::time::timeout(limit, retry_unconnected(call))
                .await
                .unwrap_or_else(|_| Err(RpcError::deadline())),
            None => retry_unconnected(call).await,
        }
    }

    /// [`Connection::unary`] under the command timeout.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, RpcError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.unary(Some(self.command_timeout), call).await
    }

    fn transport(&self) -> Transport {
        InterceptedService::new(self.channel.clone(), self.token.clone())
    }

    pub fn kv(&self) -> KvClient<Transport> {
        KvClient::new(self.transport())
    }

    pub fn maintenance(&self) -> MaintenanceClient<Transport> {
        MaintenanceClient::new(self.transport())
    }

    pub fn lease(&self) -> LeaseClient<Transport> {
        LeaseClient::new(self.transport())
    }

    pub fn cluster(&self) -> ClusterClient<Transport> {
        ClusterClient::new(self.transport())
    }

    pub fn watch(&self) -> WatchClient<Transport> {
        WatchClient::new(self.transport())
    }

    pub fn auth(&self) -> AuthClient<Transport> {
        AuthClient::new(self.transport())
    }
}

async fn retry_unconnected<T, F, Fut>(mut call: F) -> Result<T, RpcError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    loop {
        match call().await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) if is_unconnected(&status) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(status) => return Err(RpcError::from_status(&status)),
        }
    }
}

/// The call never reached a server: the transport could not connect (or finish its TLS
/// handshake). etcd's own Unavailable errors ("etcdserver: no leader") are real answers and are
/// not retried.
pub fn is_unconnected(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => !status.message().starts_with("etcdserver:"),
        // A failed handshake in the unverified-TLS connector, or a server closing the
        // connection after the handshake (a client certificate it refuses), surfaces this way.
        Code::Unknown => status.message() == "transport error",
        Code::Cancelled => status.message() == "operation was canceled",
        _ => false,
    }
}

/// The rustls settings for `--insecure-skip-tls-verify` on a TLS connection.
fn skip_verify_config(
    global: &GlobalFlags,
    tls: bool,
) -> CtlResult<Option<std::sync::Arc<rustls::ClientConfig>>> {
    let secure = tls || global.endpoints.iter().any(|e| e.starts_with("https://"));
    if !(global.insecure_skip_tls_verify && secure) {
        return Ok(None);
    }
    let identity = match (&global.cert, &global.key) {
        (Some(cert), Some(key)) => Some((cert.as_str(), key.as_str())),
        _ => None,
    };
    crate::insecure_tls::client_config(identity).map(Some)
}

fn dial(
    endpoint: &str,
    tls: Option<&ClientTlsConfig>,
    global: &GlobalFlags,
) -> CtlResult<Endpoint> {
    let bare = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    let secure = tls.is_some() || endpoint.starts_with("https://");
    // With unverified TLS the connector does the handshake; tonic sees plain HTTP/2.
    let tonic_tls = secure && !global.insecure_skip_tls_verify;
    let url = format!("{}://{bare}", if tonic_tls { "https" } else { "http" });
    let bad = |e: &dyn std::fmt::Display| Failure::new(ExitCode::BadArgs, e.to_string());
    let mut dial = Endpoint::from_shared(url)
        .map_err(|e| bad(&e))?
        .connect_timeout(global.dial_timeout)
        .keep_alive_timeout(global.keepalive_timeout)
        .http2_keep_alive_interval(global.keepalive_time);
    if tonic_tls {
        let config = tls.cloned().unwrap_or_default();
        dial = dial.tls_config(config).map_err(|e| bad(&e))?;
    }
    Ok(dial)
}

/// TLS settings from `--cacert`, `--cert` and `--key`; `None` when none is given and
/// `--insecure-transport` (the default) allows plaintext.
fn tls_config(global: &GlobalFlags) -> CtlResult<Option<ClientTlsConfig>> {
    for (flag, value) in [
        ("cert", &global.cert),
        ("key", &global.key),
        ("cacert", &global.cacert),
    ] {
        if value.as_deref() == Some("") {
            return Err(Failure::new(
                ExitCode::BadArgs,
                format!("empty string is passed to --{flag} option"),
            ));
        }
    }
    let any_file = global.cert.is_some() || global.key.is_some() || global.cacert.is_some();
    if !any_file && global.insecure_transport {
        return Ok(None);
    }
    let read = |path: &str| {
        std::fs::read(path).map_err(|e| Failure::new(ExitCode::BadArgs, format!("{path}: {e}")))
    };
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = &global.cacert {
        config = config.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&global.cert, &global.key) {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(config))
}
