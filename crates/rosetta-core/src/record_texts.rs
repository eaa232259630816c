//! The encoding of the small records the broker keeps in the store's generic record API
//! (run-time virtual hosts, users and permissions): a version byte, then texts, each prefixed by
//! its length (u32, big-endian). The store seals every record with a checksum; this layer only
//! has to tell a record it cannot read, which then decodes to `None`.

/// A record of `version` holding `texts`.
pub(crate) fn encode<'a>(version: u8, texts: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = vec![version];
    for text in texts {
        put(&mut out, text);
    }
    out
}

/// Appends one length-prefixed text (also used to build record keys).
pub(crate) fn put(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// The texts of a record of `version`; `None` for another version, a truncated text or one
/// that is not UTF-8.
pub(crate) fn decode(version: u8, bytes: &[u8]) -> Option<Vec<String>> {
    let (&found, rest) = bytes.split_first()?;
    if found != version {
        return None;
    }
    split(rest)
}

/// Length-prefixed texts back, the whole of `bytes`.
pub(crate) fn split(mut rest: &[u8]) -> Option<Vec<String>> {
    let mut texts = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return None;
        }
        texts.push(String::from_utf8(tail[..len].to_vec()).ok()?);
        rest = &tail[len..];
    }
    Some(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_come_back_and_damage_is_told() {
        let bytes = encode(3, ["a", "", "é/x"]);
        assert_eq!(
            decode(3, &bytes),
            Some(vec!["a".into(), "".into(), "é/x".into()])
        );
        assert_eq!(decode(4, &bytes), None, "another version");
        assert_eq!(decode(3, &bytes[..bytes.len() - 1]), None, "truncated");
        assert_eq!(decode(3, &[3, 0, 0, 0, 1, 0xff]), None, "not UTF-8");
        assert_eq!(decode(3, &[]), None);
        assert_eq!(decode(3, &[3]), Some(vec![]));
    }
}
