//! Pure protocol parsers: the only code that sees captured bytes.

pub mod http;
pub mod http2;
pub mod mysql;
pub mod postgres;
pub mod resp;
pub mod routes;
pub mod sql;
