//! baton-repo
