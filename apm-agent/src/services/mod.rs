//! Who listens where and what each service is called: procfs discovery,
//! container identity, and the directory the request pipeline reads.

pub mod connections;
pub mod cookies;
pub mod directory;
pub mod discovery;
pub mod identity;
pub mod sock_diag;
