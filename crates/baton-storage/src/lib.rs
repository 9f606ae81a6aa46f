//! baton-storage
