//! checks that emit findings, and the pure scorer
