//! The subject of a client certificate, read as the user name the client logs in as: its common
//! name (CN), or the whole distinguished name in RFC 4514 form (`CN=sensor-17,O=Acme,C=DE`, the
//! form OpenSSL prints with `-nameopt RFC2253` and RabbitMQ's `distinguished_name` uses).
//!
//! Only the subject is read here: rustls has already verified the certificate against
//! `ca_file` before any of this runs, so a certificate that does not parse is simply one that
//! names no user.

use yasna::{ASN1Result, BERReader, Tag, TagClass};

use crate::config::CertLoginFrom;

/// One attribute of a relative distinguished name, such as `CN=sensor-17`.
struct Attribute {
    oid: Vec<u64>,
    /// The value as text; `None` when it is not one of the string types names use.
    text: Option<String>,
    /// The value's whole DER encoding, which RFC 4514 writes as `#` and hex when it is not
    /// text.
    der: Vec<u8>,
}

/// The user name `from` takes out of a DER certificate; `None` when the certificate has no such
/// name (no CN) or its subject cannot be read.
pub(super) fn user_name(certificate: &[u8], from: CertLoginFrom) -> Option<String> {
    let rdns = subject(certificate)?;
    match from {
        CertLoginFrom::CommonName => common_name(&rdns),
        CertLoginFrom::DistinguishedName => Some(rfc4514(&rdns)),
    }
}

const COMMON_NAME: [u64; 4] = [2, 5, 4, 3];

/// The subject's CN. A subject with several CNs, or one that is no valid text, names no one:
/// joining several (as RabbitMQ does) would let one certificate with the CN `a,b` stand for
/// another with the CNs `a` and `b`.
fn common_name(rdns: &[Vec<Attribute>]) -> Option<String> {
    let mut names = rdns.iter().flatten().filter(|a| a.oid == COMMON_NAME);
    match (names.next(), names.next()) {
        (Some(only), None) => only.text.clone(),
        _ => None,
    }
}

/// The subject's relative distinguished names, in certificate order (most general first).
///
/// `Certificate ::= SEQUENCE { tbsCertificate, ... }` and `TBSCertificate ::= SEQUENCE {
/// [0] version OPTIONAL, serialNumber, signature, issuer, validity, subject, ... }` (RFC 5280).
/// Read leniently (BER), since the signature was already checked over the exact bytes.
fn subject(certificate: &[u8]) -> Option<Vec<Vec<Attribute>>> {
    yasna::parse_ber(certificate, |r| {
        r.read_sequence(|cert| {
            let subject = cert.next().read_sequence(|tbs| {
                tbs.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                for _serial_signature_issuer_validity in 0..4 {
                    tbs.next().read_der()?;
                }
                let subject = name(tbs.next())?;
                // The public key, unique ids and extensions: not needed.
                while tbs.read_optional(|r| r.read_der())?.is_some() {}
                Ok(subject)
            })?;
            while cert.read_optional(|r| r.read_der())?.is_some() {}
            Ok(subject)
        })
    })
    .ok()
}

/// `Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }`.
fn name(reader: BERReader) -> ASN1Result<Vec<Vec<Attribute>>> {
    let mut rdns = Vec::new();
    reader.read_sequence_of(|r| {
        let mut rdn = Vec::new();
        r.read_set_of(|r| {
            rdn.push(r.read_sequence(|a| {
                let oid = a.next().read_oid()?.components().clone();
                let der = a.next().read_der()?;
                Ok(Attribute {
                    oid,
                    text: text(&der),
                    der,
                })
            })?);
            Ok(())
        })?;
        rdns.push(rdn);
        Ok(())
    })?;
    Ok(rdns)
}

/// An attribute value (its whole DER encoding) as text, if it is one of the string types.
fn text(encoded: &[u8]) -> Option<String> {
    yasna::parse_ber(encoded, |r| r.read_tagged_der())
        .ok()
        .filter(|v| v.tag().tag_class == TagClass::Universal)
        .and_then(|v| decode_string(v.tag().tag_number, v.value()))
}

/// The string types a name's attribute may be written in, by universal tag number. `None` for
/// other types and for bytes that are not valid in their encoding: replacing them (with U+FFFD)
/// would let different certificates name the same user.
fn decode_string(tag_number: u64, bytes: &[u8]) -> Option<String> {
    match tag_number {
        // UTF8String, NumericString, PrintableString, IA5String, VisibleString.
        12 | 18 | 19 | 22 | 26 => String::from_utf8(bytes.to_vec()).ok(),
        // TeletexString: in practice Latin-1, where every byte is a character.
        20 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16, big-endian.
        30 if bytes.len().is_multiple_of(2) => char::decode_utf16(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]])),
        )
        .collect::<Result<String, _>>()
        .ok(),
        // UniversalString: UTF-32, big-endian.
        28 if bytes.len().is_multiple_of(4) => bytes
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// RFC 4514: the most specific RDN first, `,` between RDNs, `+` between the attributes of one,
/// the usual short names (`CN`, `O`, ...) and dotted OIDs for the others, special characters
/// escaped.
fn rfc4514(rdns: &[Vec<Attribute>]) -> String {
    rdns.iter()
        .rev()
        .map(|rdn| {
            rdn.iter()
                .map(|a| format!("{}={}", short_name(&a.oid), value(a)))
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn short_name(oid: &[u64]) -> String {
    let name = match oid {
        [2, 5, 4, 3] => "CN",
        [2, 5, 4, 6] => "C",
        [2, 5, 4, 7] => "L",
        [2, 5, 4, 8] => "ST",
        [2, 5, 4, 9] => "STREET",
        [2, 5, 4, 10] => "O",
        [2, 5, 4, 11] => "OU",
        [0, 9, 2342, 19200300, 100, 1, 1] => "UID",
        [0, 9, 2342, 19200300, 100, 1, 25] => "DC",
        _ => return oid.iter().map(u64::to_string).collect::<Vec<_>>().join("."),
    };
    name.to_owned()
}

/// An attribute's value as RFC 4514 writes it: text escaped, anything else as `#` and the hex
/// of its encoding.
fn value(attribute: &Attribute) -> String {
    match &attribute.text {
        Some(text) => escape(text),
        None => {
            let hex: String = attribute.der.iter().map(|b| format!("{b:02x}")).collect();
            format!("#{hex}")
        }
    }
}

/// RFC 4514 §2.4: a backslash before `" + , ; < > \`, before a leading `#` or space and before a
/// trailing space; NUL as `\00`.
fn escape(value: &str) -> String {
    let last = value.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        if c == '\0' {
            out.push_str("\\00");
            continue;
        }
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_characters_are_escaped_as_rfc_4514_asks() {
        assert_eq!(escape("sensor-17"), "sensor-17");
        assert_eq!(escape("Acme, Inc."), "Acme\\, Inc.");
        assert_eq!(escape(" a+b "), "\\ a\\+b\\ ");
        assert_eq!(escape("#1"), "\\#1");
        assert_eq!(escape("a\0b"), "a\\00b");
    }

    fn attribute(oid: &[u64], value: &str) -> Attribute {
        Attribute {
            oid: oid.to_vec(),
            text: Some(value.to_owned()),
            der: Vec::new(),
        }
    }

    #[test]
    fn the_common_name_is_the_only_cn() {
        let organization = || vec![attribute(&[2, 5, 4, 10], "Acme")];
        let cn = |name: &str| vec![attribute(&COMMON_NAME, name)];
        assert_eq!(common_name(&[organization()]), None);
        assert_eq!(
            common_name(&[organization(), cn("sensor-17")]).as_deref(),
            Some("sensor-17")
        );
        // Several CNs name no one, so they cannot pass for one CN `a,b`; nor does a CN that is
        // no text.
        assert_eq!(common_name(&[cn("a"), organization(), cn("b")]), None);
        assert_eq!(common_name(&[cn("a,b")]).as_deref(), Some("a,b"));
        let binary = Attribute {
            oid: COMMON_NAME.to_vec(),
            text: None,
            der: vec![0x02, 0x01, 0x2a],
        };
        assert_eq!(common_name(&[vec![binary]]), None);
    }

    #[test]
    fn a_name_is_written_most_specific_first() {
        let rdns = vec![
            vec![attribute(&[2, 5, 4, 6], "DE")],
            vec![attribute(&[2, 5, 4, 10], "Acme, Inc.")],
            vec![
                attribute(&[2, 5, 4, 3], "sensor-17"),
                attribute(&[1, 2, 840, 113549, 1, 9, 1], "ops@example.com"),
                Attribute {
                    oid: vec![2, 5, 4, 5],
                    text: None,
                    der: vec![0x02, 0x01, 0x2a],
                },
            ],
        ];
        assert_eq!(
            rfc4514(&rdns),
            "CN=sensor-17+1.2.840.113549.1.9.1=ops@example.com+2.5.4.5=#02012a,O=Acme\\, Inc.,C=DE"
        );
    }

    #[test]
    fn directory_strings_are_read_in_their_encodings() {
        // PrintableString, UTF8String, BMPString, and an INTEGER that is no text.
        assert_eq!(text(b"\x13\x02ab").as_deref(), Some("ab"));
        assert_eq!(
            text("\x0c\x03\u{e9}t".as_bytes()).as_deref(),
            Some("\u{e9}t")
        );
        assert_eq!(text(b"\x1e\x04\x00h\x00i").as_deref(), Some("hi"));
        assert_eq!(text(b"\x02\x01\x2a"), None);
        // UniversalString.
        assert_eq!(text(b"\x1c\x04\x00\x00\x00h").as_deref(), Some("h"));
    }

    #[test]
    fn invalid_strings_are_no_text() {
        // UTF-8 that is not, a lone UTF-16 surrogate, an odd-length BMPString, a code point
        // past U+10FFFF, a UniversalString cut short.
        assert_eq!(text(b"\x0c\x02a\xff"), None);
        assert_eq!(text(b"\x1e\x02\xd8\x00"), None);
        assert_eq!(text(b"\x1e\x03\x00h\x00"), None);
        assert_eq!(text(b"\x1c\x04\x00\x11\x00\x00"), None);
        assert_eq!(text(b"\x1c\x03\x00\x00\x00"), None);
    }

    #[test]
    fn garbage_names_no_one() {
        assert!(user_name(b"not a certificate", CertLoginFrom::CommonName).is_none());
        assert!(user_name(&[], CertLoginFrom::DistinguishedName).is_none());
    }
}
