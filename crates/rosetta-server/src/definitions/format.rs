//! RabbitMQ's definitions file, as `rabbitmqctl export_definitions` and `GET /api/definitions`
//! write it (3.x and 4.x). Reading is lenient, as RabbitMQ's own import is: fields Rosetta has
//! no use for (`limits`, a queue's `type`, ...) are ignored, missing ones take their defaults,
//! and user and virtual host tags may be a list or one comma-separated string (3.8 and older).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value as Json};

/// A whole definitions file. The per-virtual-host form (`GET /api/definitions/{vhost}`) has no
/// users, virtual hosts or permissions, and its items name no `vhost`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Definitions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rabbit_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rabbitmq_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserDef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhosts: Option<Vec<VHostDef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<PermissionDef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_permissions: Option<Vec<TopicPermissionDef>>,
    /// Runtime parameters (shovels, federation upstreams, ...): none in Rosetta.
    pub parameters: Vec<Json>,
    /// Cluster-wide parameters (the cluster name and id): none in Rosetta.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_parameters: Option<Vec<Json>>,
    /// Policies: none in Rosetta; queue arguments do what policies would.
    pub policies: Vec<Json>,
    pub queues: Vec<QueueDef>,
    pub exchanges: Vec<ExchangeDef>,
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDef {
    pub name: String,
    /// Base64 of the 4-byte salt and the digest; empty for a user without a password.
    #[serde(default)]
    pub password_hash: String,
    #[serde(default = "sha256")]
    pub hashing_algorithm: String,
    #[serde(default, deserialize_with = "tag_list")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub limits: Map<String, Json>,
}

fn sha256() -> String {
    "rabbit_password_hashing_sha256".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VHostDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, deserialize_with = "tag_list")]
    pub tags: Vec<String>,
    /// 3.11 and later repeat description and tags here, and may keep only them here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<VHostMetadata>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VHostMetadata {
    pub description: String,
    #[serde(deserialize_with = "tag_list")]
    pub tags: Vec<String>,
}

impl VHostDef {
    /// The description, wherever the file keeps it.
    pub fn description(&self) -> &str {
        match &self.metadata {
            Some(m) if self.description.is_empty() => &m.description,
            _ => &self.description,
        }
    }

    pub fn tags(&self) -> &[String] {
        match &self.metadata {
            Some(m) if self.tags.is_empty() => &m.tags,
            _ => &self.tags,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionDef {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicPermissionDef {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: Map<String, Json>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub arguments: Map<String, Json>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub arguments: Map<String, Json>,
}

fn yes() -> bool {
    true
}

/// Tags as a list, or as one comma-separated string (RabbitMQ 3.8 and older, and the
/// management UI's form). Blank entries are dropped.
pub(crate) fn tag_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tags {
        List(Vec<String>),
        Text(String),
    }
    let tags = match Option::<Tags>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(Tags::List(list)) => list,
        Some(Tags::Text(text)) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(tags
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_may_be_a_list_or_a_comma_string() {
        let user: UserDef = serde_json::from_str(
            r#"{"name":"a","password_hash":"x","tags":"administrator, monitoring"}"#,
        )
        .expect("user");
        assert_eq!(user.tags, ["administrator", "monitoring"]);
        assert_eq!(user.hashing_algorithm, "rabbit_password_hashing_sha256");
        let user: UserDef =
            serde_json::from_str(r#"{"name":"a","tags":["management"]}"#).expect("user");
        assert_eq!(user.tags, ["management"]);
        let user: UserDef = serde_json::from_str(r#"{"name":"a","tags":""}"#).expect("user");
        assert!(user.tags.is_empty());
    }

    #[test]
    fn vhost_description_is_found_in_its_metadata_too() {
        let v: VHostDef = serde_json::from_str(
            r#"{"name":"x","metadata":{"description":"orders","tags":["eu"]},"limits":[]}"#,
        )
        .expect("vhost");
        assert_eq!(v.description(), "orders");
        assert_eq!(v.tags(), ["eu"]);
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_defaulted() {
        let d: Definitions = serde_json::from_str(
            r#"{"queues":[{"name":"q","vhost":"/","type":"classic","node":"rabbit@x"}],"extra":1}"#,
        )
        .expect("definitions");
        assert_eq!(d.queues[0].name, "q");
        assert!(d.queues[0].durable);
        assert!(d.users.is_none());
    }
}
