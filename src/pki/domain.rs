//! Validation of the tunnel domain that goes into the server certificate.

/// Why a tunnel domain is refused; each message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tunnel domain {domain:?}: {reason}; expected a bare DNS name such as mcp.example.com")]
pub struct DomainError {
    /// The value given.
    pub domain: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Checks that `domain` is a DNS name usable as the tunnel domain: lowercase labels of
/// `[a-z0-9-]` (1 to 63 bytes, no leading or trailing hyphen), at least two labels, at most 253
/// bytes, not an IP address. Wildcards, URLs (schemes, ports, paths) and a trailing dot are
/// refused with a message saying what to give instead.
pub fn validate_domain(domain: &str) -> Result<(), DomainError> {
    let fail = |reason: &str| {
        Err(DomainError {
            domain: domain.to_string(),
            reason: reason.to_string(),
        })
    };
    if domain.is_empty() {
        return fail("is empty");
    }
    if domain.contains("://") {
        return fail("looks like a URL; give the host name only, without scheme");
    }
    if domain.starts_with("*.") || domain.contains('*') {
        return fail(
            "is a wildcard; give the bare domain (the certificate covers both the domain and *.domain)",
        );
    }
    if domain.contains('/') {
        return fail("contains a path; give the host name only");
    }
    if domain.contains(':') {
        return fail("contains a port or colon; give the host name only");
    }
    if domain.ends_with('.') {
        return fail("ends with a dot; drop the trailing dot");
    }
    if domain.len() > 253 {
        return fail("is longer than 253 bytes");
    }
    if domain.chars().any(|c| c.is_ascii_uppercase()) {
        return fail("contains upper-case letters; write it in lower case");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return fail("has a single label; a tunnel domain has at least two (name.tld)");
    }
    for label in &labels {
        if label.is_empty() {
            return fail("has an empty label (two dots in a row or a leading dot)");
        }
        if label.len() > 63 {
            return fail("has a label longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail(
                "has a character outside a-z, 0-9 and '-' (use the punycode xn-- form for international names)",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail("has a label starting or ending with '-'");
        }
    }
    if labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return fail("is an IP address, not a DNS name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_names() {
        for ok in [
            "example.com",
            "mcp.example.com",
            "a-b.c0.example.co.uk",
            "xn--bcher-kva.example",
            "1.example.com",
        ] {
            assert_eq!(validate_domain(ok), Ok(()), "{ok}");
        }
        let long_label = format!("{}.com", "a".repeat(63));
        assert_eq!(validate_domain(&long_label), Ok(()));
    }

    #[test]
    fn refuses_with_reason() {
        let cases = [
            ("", "empty"),
            ("https://mcp.example.com", "URL"),
            ("*.example.com", "wildcard"),
            ("mcp.example.com:443", "port"),
            ("mcp.example.com/x", "path"),
            ("mcp.example.com.", "trailing dot"),
            ("MCP.example.com", "lower case"),
            ("localhost", "single label"),
            ("a..b", "empty label"),
            ("-a.example.com", "'-'"),
            ("a-.example.com", "'-'"),
            ("a_b.example.com", "outside a-z"),
            ("bücher.example", "outside a-z"),
            ("10.0.0.1", "IP address"),
            ("mcp example.com", "outside a-z"),
        ];
        for (bad, why) in cases {
            let err = validate_domain(bad).expect_err(bad);
            let msg = err.to_string();
            assert!(msg.contains(why), "{bad}: {msg}");
            assert!(msg.contains("expected a bare DNS name"), "{msg}");
        }
        assert!(validate_domain(&format!("{}.com", "a".repeat(64))).is_err());
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(long.len() > 253);
        assert!(validate_domain(&long).is_err());
    }
}
