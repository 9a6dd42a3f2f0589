//! TOML schema to validated, typed settings
