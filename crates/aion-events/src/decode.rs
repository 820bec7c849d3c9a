use std::fmt;

use crate::event::Schema;

/// Why a payload was rejected: the JSON path of the offending field (`.` for the whole document)
/// and a message. Dead-letter records carry both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Reject {
    pub path: String,
    pub message: String,
}

impl Reject {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Bounds applied before a payload is parsed.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted payload. Events are small; a multi-megabyte one is a bug or an attack, and
    /// would stall a stage's batch, so it is dead-lettered instead of parsed.
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
        }
    }
}

/// The schema-registry wire format (Confluent's, also Apicurio's and Redpanda's in their
/// compatible mode): a zero byte, the schema id (4 bytes, big-endian), then the document.
const REGISTRY_FRAME: usize = 5;

/// Decodes and validates one payload of schema `T`: a JSON document, or one framed by a schema
/// registry's serializer. JSON text never starts with a zero byte, so a frame is recognised
/// without configuration; its schema id is not looked up (the document is validated here).
///
/// The fast path is a plain `serde_json` parse; only a failing payload is parsed a second time to
/// find the path of the offending field, so good events never pay for path tracking.
pub fn decode<T: Schema>(payload: &[u8], limits: &DecodeLimits) -> Result<T, Reject> {
    if payload.is_empty() {
        return Err(Reject::new(".", "empty payload"));
    }
    let payload = match payload {
        [0, ..] if payload.len() <= REGISTRY_FRAME => {
            return Err(Reject::new(
                ".",
                format!(
                    "schema-registry frame of {} bytes holds no document (header: 5 bytes)",
                    payload.len()
                ),
            ))
        }
        [0, ..] => &payload[REGISTRY_FRAME..],
        _ => payload,
    };
    if payload.len() > limits.max_bytes {
        return Err(Reject::new(
            ".",
            format!(
                "payload of {} bytes exceeds the limit of {} bytes",
                payload.len(),
                limits.max_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| Reject::new(".", format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    let event: T = match serde_json::from_str(text) {
        Ok(event) => event,
        Err(_) => return Err(locate_error::<T>(text)),
    };
    event.validate()?;
    Ok(event)
}

/// `serde_path_to_error` writes `?` for a map key it never read (the input broke off inside an
/// object); report the innermost known container instead.
fn known_path(path: &str) -> String {
    match path.trim_end_matches('?').trim_end_matches('.') {
        "" => ".".to_owned(),
        known => known.to_owned(),
    }
}

fn locate_error<T: Schema>(text: &str) -> Reject {
    let mut de = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => Reject::new(known_path(&e.path().to_string()), e.inner().to_string()),
        // The document itself parsed, so what failed is what follows it.
        Ok(_) => match de.end() {
            Err(e) => Reject::new(".", e.to_string()),
            Ok(()) => Reject::new(".", "payload is not valid JSON for this schema"),
        },
    }
}
