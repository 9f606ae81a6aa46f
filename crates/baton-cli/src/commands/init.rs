use crate::baton::{InitOptions, Repository};
use crate::cli::{Global, InitArgs};
use crate::context;
use anyhow::{Result, bail};
use baton_types::ChunkerParams;

pub fn run(g: &Global, a: &InitArgs) -> Result<i32> {
    let storage = context::storage(g)?;
    let chunker = match &a.chunker {
        Some(v) if v.len() != 3 => bail!("--chunker takes MIN,AVG,MAX (three sizes in bytes)"),
        Some(v) => {
            let mut seed = [0u8; 8];
            getrandom_seed(&mut seed);
            Some(ChunkerParams {
                min_size: v[0],
                avg_size: v[1],
                max_size: v[2],
                seed: u64::from_le_bytes(seed),
            })
        }
        None => None,
    };
    let mut opts = InitOptions {
        compression: a.compression,
        pack_size: a.pack_size.saturating_mul(1 << 20),
        chunker,
        kdf: context::kdf(&a.kdf),
    };
    let repo = if a.copy_chunker_params {
        let other = context::open_from(g, &a.from)?;
        opts.chunker = Some(other.config().chunker);
        if storage.exists()? {
            return Err(crate::baton::RepoError::AlreadyExists {
                location: storage.location(),
            }
            .into());
        }
        let pw = new_password(g)?;
        Repository::init_related(storage, pw.as_bytes(), &opts, &other)?
    } else {
        create(g, storage, &opts)?
    };
    if g.json {
        super::print_json(
            "initialized",
            serde_json::json!({
                "id": repo.config().id.to_hex(),
                "repository": repo.storage().location(),
                "chunker_params_from": a.copy_chunker_params.then(|| a.from.repo.as_ref().map(|p| p.display().to_string())).flatten(),
            }),
        );
    } else if !g.quiet {
        outln!(
            "created baton repository {} at {}",
            repo.config().id.short(),
            repo.storage().location()
        );
        outln!("Keep the password safe: without it the data cannot be recovered.");
    }
    Ok(crate::exit::OK)
}

/// Creates a repository, asking for a new password if none is configured.
pub fn create(
    g: &Global,
    storage: std::sync::Arc<dyn baton_storage::Storage>,
    opts: &InitOptions,
) -> Result<Repository> {
    let pw = new_password(g)?;
    Ok(Repository::init(storage, pw.as_bytes(), opts)?)
}

fn new_password(g: &Global) -> Result<zeroize::Zeroizing<String>> {
    let pw = zeroize::Zeroizing::new(context::password(g, true)?);
    if pw.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(pw)
}

fn getrandom_seed(buf: &mut [u8]) {
    let id = crate::baton::random_id();
    buf.copy_from_slice(&id.as_bytes()[..buf.len()]);
}
