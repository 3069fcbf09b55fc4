//! Reading an OTLP/HTTP request body: streaming decompression under a hard size limit.
//!
//! In: the request body frames as they arrive and the `Content-Encoding` (identity, gzip,
//! zstd). Out: the decompressed bytes, or `PayloadTooLarge` as soon as either the raw body or
//! the decompressed output passes its limit. Each frame is decompressed as it arrives into a
//! buffer that never grows past the limit, so a gzip bomb costs at most `limit` bytes of
//! memory and stops being read the moment it exceeds it.

use std::io::{self, Write};

use bytes::Bytes;
use http_body_util::BodyExt;

use super::ExportError;

/// A `Content-Encoding` the HTTP receiver takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// Parses a `Content-Encoding` header value; `None` header means identity.
    pub(crate) fn parse(value: Option<&str>) -> Result<Self, ExportError> {
        let Some(value) = value else { return Ok(Self::Identity) };
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(Self::Identity),
            "gzip" | "x-gzip" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            other => Err(ExportError::UnsupportedMediaType(format!(
                "unsupported content-encoding {other:?}, expected gzip, zstd or identity"
            ))),
        }
    }

    /// The most raw (possibly compressed) bytes a body within `limit` decompressed bytes can
    /// take: incompressible data grows a little under gzip (stored blocks) and zstd (raw
    /// blocks), so leave room for that and no more.
    pub(crate) fn raw_limit(self, limit: u64) -> u64 {
        match self {
            Self::Identity => limit,
            Self::Gzip | Self::Zstd => limit.saturating_add(limit / 1024).saturating_add(64 * 1024),
        }
    }
}

/// A `Vec` sink that refuses to hold more than `limit` bytes and never reserves beyond it.
struct LimitedBuf {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl LimitedBuf {
    fn new(limit: usize) -> Self {
        Self { buf: Vec::new(), limit, exceeded: false }
    }
}

impl Write for LimitedBuf {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let needed = self.buf.len().saturating_add(data.len());
        if needed > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("decompressed body exceeds the limit"));
        }
        if needed > self.buf.capacity() {
            // Amortized doubling, but capped at the limit so we never reserve past it.
            let target = needed.max(self.buf.capacity().saturating_mul(2)).min(self.limit);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Sink {
    Identity(LimitedBuf),
    Gzip(Box<flate2::write::MultiGzDecoder<LimitedBuf>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, LimitedBuf>>),
}

impl Sink {
    fn new(encoding: Encoding, limit: usize) -> Result<Self, ExportError> {
        let out = LimitedBuf::new(limit);
        Ok(match encoding {
            Encoding::Identity => Self::Identity(out),
            Encoding::Gzip => Self::Gzip(Box::new(flate2::write::MultiGzDecoder::new(out))),
            Encoding::Zstd => Self::Zstd(Box::new(
                zstd::stream::write::Decoder::new(out)
                    .map_err(|e| ExportError::Internal(format!("zstd decoder: {e}")))?,
            )),
        })
    }

    fn out(&self) -> &LimitedBuf {
        match self {
            Self::Identity(out) => out,
            Self::Gzip(decoder) => decoder.get_ref(),
            Self::Zstd(decoder) => decoder.get_ref(),
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Identity(out) => out.write_all(data),
            Self::Gzip(decoder) => decoder.write_all(data),
            Self::Zstd(decoder) => decoder.write_all(data),
        }
    }

    fn finish(self) -> Result<Vec<u8>, (io::Error, bool)> {
        match self {
            Self::Identity(out) => Ok(out.buf),
            Self::Gzip(mut decoder) => match decoder.try_finish() {
                Ok(()) => Ok(std::mem::replace(decoder.get_mut(), LimitedBuf::new(0)).buf),
                Err(e) => Err((e, decoder.get_ref().exceeded)),
            },
            Self::Zstd(mut decoder) => match decoder.do_finish() {
                Ok(()) => Ok(decoder.into_inner().buf),
                Err(e) => Err((e, decoder.get_ref().exceeded)),
            },
        }
    }
}

/// Reads `body`, decompressing per `encoding`, and returns at most `limit` bytes.
///
/// Errors: `PayloadTooLarge` once the raw body passes [`Encoding::raw_limit`] or the output
/// passes `limit`; `InvalidArgument` for corrupt or truncated compressed data or a broken body
/// stream.
pub(crate) async fn read_body<B>(body: B, encoding: Encoding, limit: u64) -> Result<Bytes, ExportError>
where
    B: axum::body::HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let too_large = || ExportError::PayloadTooLarge { limit };
    let raw_limit = encoding.raw_limit(limit);
    let out_limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut sink = Sink::new(encoding, out_limit)?;
    let mut raw_len: u64 = 0;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ExportError::InvalidArgument(format!("reading body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        raw_len = raw_len.saturating_add(data.len() as u64);
        if raw_len > raw_limit {
            return Err(too_large());
        }
        if let Err(e) = sink.write(&data) {
            return Err(if sink.out().exceeded {
                too_large()
            } else {
                ExportError::InvalidArgument(format!("corrupt {encoding:?} body: {e}").to_lowercase())
            });
        }
    }
    match sink.finish() {
        Ok(buf) => Ok(Bytes::from(buf)),
        Err((_, true)) => Err(too_large()),
        Err((e, false)) => {
            Err(ExportError::InvalidArgument(format!("corrupt {encoding:?} body: {e}").to_lowercase()))
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    async fn read(data: Vec<u8>, encoding: Encoding, limit: u64) -> Result<Bytes, ExportError> {
        read_body(Full::new(Bytes::from(data)), encoding, limit).await
    }

    #[tokio::test]
    async fn identity_within_and_over_the_limit() {
        assert_eq!(read(b"abc".to_vec(), Encoding::Identity, 3).await.unwrap(), &b"abc"[..]);
        assert_eq!(
            read(b"abcd".to_vec(), Encoding::Identity, 3).await.unwrap_err(),
            ExportError::PayloadTooLarge { limit: 3 }
        );
    }

    #[tokio::test]
    async fn gzip_and_zstd_round_trip_across_frames() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let compressed = gzip(&data);
        // Split into small frames to exercise the streaming path.
        let frames: Vec<Result<Bytes, std::io::Error>> =
            compressed.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let body = axum::body::Body::from_stream(futures::stream::iter(frames));
        let out = read_body(body, Encoding::Gzip, data.len() as u64).await.unwrap();
        assert_eq!(out, data);

        let compressed = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(read(compressed, Encoding::Zstd, data.len() as u64).await.unwrap(), data);
    }

    #[tokio::test]
    async fn decompressed_size_is_limited_and_buffer_stays_bounded() {
        let data = vec![7u8; 1_000_001];
        let err = read(gzip(&data), Encoding::Gzip, 1_000_000).await.unwrap_err();
        assert_eq!(err, ExportError::PayloadTooLarge { limit: 1_000_000 });
        let err = read(zstd::encode_all(&data[..], 3).unwrap(), Encoding::Zstd, 1_000_000).await;
        assert_eq!(err.unwrap_err(), ExportError::PayloadTooLarge { limit: 1_000_000 });

        let mut buf = LimitedBuf::new(10);
        buf.write_all(&[0; 6]).unwrap();
        buf.write_all(&[0; 4]).unwrap();
        assert!(buf.buf.capacity() <= 10);
        assert!(buf.write_all(&[0]).is_err());
        assert!(buf.exceeded);
    }

    #[tokio::test]
    async fn corrupt_and_truncated_input_is_invalid() {
        let err = read(b"not gzip at all".to_vec(), Encoding::Gzip, 1000).await.unwrap_err();
        assert!(matches!(err, ExportError::InvalidArgument(_)), "{err:?}");
        let mut truncated = gzip(b"hello world, hello world");
        truncated.truncate(truncated.len() - 6);
        let err = read(truncated, Encoding::Gzip, 1000).await.unwrap_err();
        assert!(matches!(err, ExportError::InvalidArgument(_)), "{err:?}");
        let mut truncated = zstd::encode_all(&b"hello world"[..], 3).unwrap();
        truncated.truncate(truncated.len() - 2);
        let err = read(truncated, Encoding::Zstd, 1000).await.unwrap_err();
        assert!(matches!(err, ExportError::InvalidArgument(_)), "{err:?}");
    }

    #[test]
    fn parses_encodings() {
        assert_eq!(Encoding::parse(None).unwrap(), Encoding::Identity);
        assert_eq!(Encoding::parse(Some(" GZIP ")).unwrap(), Encoding::Gzip);
        assert_eq!(Encoding::parse(Some("zstd")).unwrap(), Encoding::Zstd);
        assert!(matches!(Encoding::parse(Some("br")), Err(ExportError::UnsupportedMediaType(_))));
        assert!(matches!(Encoding::parse(Some("gzip, zstd")), Err(ExportError::UnsupportedMediaType(_))));
    }
}
