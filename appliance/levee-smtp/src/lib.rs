//! sans-IO SMTP: command parser, DATA/BDAT receivers, server Session, client reply parser
