//! Operation histories (JSON Lines).
