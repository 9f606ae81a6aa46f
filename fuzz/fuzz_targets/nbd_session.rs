//! A whole NBD client byte stream into baton_nbd::serve_connection over an
//! in-memory pipe, with a small RAM volume: the server must neither panic
//! nor hang, whatever the client sends.
//!
//! Input: one byte of setup (bit 0: read-only export; bit 1: a 4 KiB
//! maximum request, so oversized writes are skipped), then the client's
//! bytes, sent at once and followed by end of stream.
#![no_main]

use baton_nbd::{Extent, ServerConfig, Volume, VolumeError, serve_connection};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: usize = 64 << 10;

struct Ram {
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl Volume for Ram {
    fn size(&self) -> u64 {
        SIZE as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        // A bad sector, for the error paths.
        if (offset..offset + buf.len() as u64).contains(&60_000) {
            return Err(VolumeError::io("bad sector").at(60_000));
        }
        buf.copy_from_slice(&self.data.lock().unwrap()[offset as usize..][..buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], _: bool) -> Result<(), VolumeError> {
        self.data.lock().unwrap()[offset as usize..][..data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _: bool, _: bool) -> Result<(), VolumeError> {
        self.data.lock().unwrap()[offset as usize..][..len as usize].fill(0);
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), VolumeError> {
        self.write_zeroes(offset, len, true, fua)
    }
    fn flush(&self) -> Result<(), VolumeError> {
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, VolumeError> {
        // 4 KiB blocks, alternately data and hole, the last one as given.
        let mut out = Vec::new();
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let next = ((at / 4096 + 1) * 4096).min(end);
            let hole = (at / 4096) % 2 == 1;
            out.push(Extent {
                length: next - at,
                hole,
                zero: hole,
            });
            at = next;
        }
        Ok(out)
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&setup, client)) = input.split_first() else {
        return;
    };
    let vol = Arc::new(Ram {
        data: Mutex::new(vec![0; SIZE]),
        read_only: setup & 1 != 0,
    });
    let cfg = ServerConfig {
        max_request: if setup & 2 != 0 { 4096 } else { 32 << 20 },
        ..ServerConfig::default()
    };
    runtime().block_on(async {
        let (c, s) = tokio::io::duplex(64 << 10);
        let (mut rd, mut wr) = tokio::io::split(c);
        let feed = async move {
            // Fails once the server has closed; that is fine.
            let _ = wr.write_all(client).await;
            let _ = wr.shutdown().await;
        };
        let drain = async move {
            let mut buf = vec![0u8; 16 << 10];
            let mut total = 0usize;
            while let Ok(n @ 1..) = rd.read(&mut buf).await {
                total += n;
            }
            total
        };
        let session = async { tokio::join!(feed, drain, serve_connection(s, vol, &cfg)) };
        let (_, sent, _) = tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .expect("the session hung");
        // The server never sends more than the greeting, replies and data
        // a client of this size can ask for.
        assert!(sent <= 18 + client.len() * (SIZE + 64), "{sent} bytes sent");
    });
});
