//! The error type of the stack layer.

/// Why stack settings, a tunnel grouping or a rendered file were refused.
///
/// Messages name the host and the variable and say what is expected. They never carry a
/// token: [`StackError::Token`] describes the problem without the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// A host variable is missing, has the wrong type or an invalid value.
    #[error("{host}: {var}: {problem}")]
    Var {
        /// Inventory host whose merged vars were read.
        host: String,
        /// The variable (for a route, `tunnel_routes.<subdomain>`).
        var: String,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// Two hosts of one tunnel disagree on a value that must be identical across replicas.
    #[error(
        "tunnel {tunnel}: {host} disagrees with {first_host} on {var} ({detail}); every replica \
         of a tunnel serves the same token and certificates, so set {var} once for the whole group"
    )]
    Disagree {
        /// The tunnel (its `tunnel_name`).
        tunnel: String,
        /// The variable the hosts disagree on.
        var: String,
        /// The first host of the tunnel, whose value is the reference.
        first_host: String,
        /// The host that differs.
        host: String,
        /// Both values when they are not sensitive, otherwise just "values differ".
        detail: String,
    },
    /// Two tunnels claim the same domain.
    #[error(
        "tunnels {first} and {second} both use domain {domain} (hosts {first_host} and \
         {second_host}): a tunnel domain belongs to exactly one tunnel"
    )]
    DomainClash {
        /// The domain both claim.
        domain: String,
        /// The first tunnel's name.
        first: String,
        /// A host of the first tunnel.
        first_host: String,
        /// The second tunnel's name.
        second: String,
        /// A host of the second tunnel.
        second_host: String,
    },
    /// The tunnel token cannot be written safely into `.env` (the value is never shown).
    #[error("TUNNEL_TOKEN for .env: {0} (value not shown)")]
    Token(&'static str),
}
