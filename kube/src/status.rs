//! Failures as kube-apiserver reports them: a metav1.Status body with its HTTP code, reason and
//! message worded as apimachinery's `errors` package words them (clients match on reasons).

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    reason: &'static str,
    pub message: String,
    /// The object named in the request: `(resource, name)`.
    details: Option<(String, String)>,
}

impl ApiError {
    fn about(code: u16, reason: &'static str, resource: &str, name: &str, message: String) -> Self {
        ApiError {
            code,
            reason,
            message,
            details: Some((resource.to_string(), name.to_string())),
        }
    }

    pub fn not_found(resource: &str, name: &str) -> Self {
        let message = format!("{resource} \"{name}\" not found");
        Self::about(404, "NotFound", resource, name, message)
    }

    pub fn already_exists(resource: &str, name: &str) -> Self {
        let message = format!("{resource} \"{name}\" already exists");
        Self::about(409, "AlreadyExists", resource, name, message)
    }

    pub fn conflict(resource: &str, name: &str, why: &str) -> Self {
        let message = format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}");
        Self::about(409, "Conflict", resource, name, message)
    }

    /// kube-apiserver's wording for a stale resourceVersion on update or delete.
    pub fn modified(resource: &str, name: &str) -> Self {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(kind: &str, name: &str, why: &str) -> Self {
        let message = format!("{kind} \"{name}\" is invalid: {why}");
        Self::about(422, "Invalid", kind, name, message)
    }

    fn plain(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// A request understood but not applicable (a patch that does not apply).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::plain(422, "Invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::plain(400, "BadRequest", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::plain(403, "Forbidden", message)
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::plain(410, "Expired", message)
    }

    pub fn method_not_allowed(method: &str) -> Self {
        let message = format!("{method} is not supported on this resource");
        Self::plain(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str, accepted: &str) -> Self {
        let message = format!("the body of the request was in an unknown format - accepted media types include: {accepted} (got {content_type:?})");
        Self::plain(415, "UnsupportedMediaType", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::plain(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::plain(503, "ServiceUnavailable", message)
    }

    /// The path names nothing this server serves.
    pub fn no_route() -> Self {
        Self::plain(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((resource, name)) = &self.details {
            // `deployments.apps`: the plural and its group, as apimachinery's errors give them.
            let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
            status["details"] = json!({"name": name, "kind": kind});
            if !group.is_empty() {
                status["details"]["group"] = group.into();
            }
        }
        status
    }
}

/// The Status of a successful create that returns no object (a pod's binding).
pub fn created() -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    })
}

/// The Status of a successful delete, as kube-apiserver answers for objects deleted at once.
pub fn deleted(resource: &str, name: &str, uid: &Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "kind": resource, "uid": uid},
    })
}
