//! the only user of sled: typed trees for queue index, message log, quarantine, stats, tokens, config
