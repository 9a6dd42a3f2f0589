//! Router tests: every permission rule and every security header, through `oneshot`.
