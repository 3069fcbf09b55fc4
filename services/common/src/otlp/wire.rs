//! The protobuf wire format read in place, with prost 0.14's rules, for the code that reads
//! encoded OTLP without decoding it into structs: [`super::walk`] and the appender's rows.
//!
//! In: a byte slice, or a range of one ([`Cursor::within`]). Out: field keys, scalar values,
//! `&str`s, and the byte ranges of `bytes` fields and embedded messages as offsets into the
//! whole slice (so a range found by one cursor opens another); or a [`WalkError`].
//!
//! Guaranteed, and checked against prost through `walk`'s tests and fuzzing: what prost refuses
//! is refused, with prost's `DecodeError` text (varints of at most 10 bytes whose 10th byte is
//! 0 or 1; keys that fit a `u32`, with a wire type 0-5 and a tag other than 0; lengths within
//! the bytes; UTF-8 strings; matched group tags; prost's [`RECURSION_LIMIT`] for nested
//! messages and groups). A cursor never reads past its end, never panics and allocates only
//! its errors.

use std::{fmt, ops::Range};

/// Protobuf wire types: prost's own, so their `Debug` text in errors is prost's.
pub use prost::encoding::WireType;

/// prost's `RECURSION_LIMIT`: nested messages (and groups) deeper than this are refused.
pub const RECURSION_LIMIT: u32 = 100;

/// Why bytes are not a valid message. Its text is prost's `DecodeError` text for the same
/// bytes; [`WalkError::offset`] adds where in them.
#[derive(Clone, PartialEq, Eq)]
pub struct WalkError {
    inner: Box<ErrorInner>,
}

#[derive(Clone, PartialEq, Eq)]
struct ErrorInner {
    kind: ErrorKind,
    offset: usize,
    /// (message, field) pairs, innermost first, as prost lists them.
    stack: Vec<(&'static str, &'static str)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    InvalidVarint,
    RecursionLimitReached,
    InvalidWireType(u64),
    InvalidKey(u64),
    InvalidTag,
    UnexpectedWireType { actual: WireType, expected: WireType },
    BufferUnderflow,
    DelimitedLengthExceeded,
    UnexpectedEndGroupTag,
    InvalidString,
}

impl WalkError {
    #[cold]
    fn new(kind: ErrorKind, offset: usize) -> Self {
        Self { inner: Box::new(ErrorInner { kind, offset, stack: Vec::new() }) }
    }

    /// Where in the cursor's bytes the problem was found.
    pub fn offset(&self) -> usize {
        self.inner.offset
    }

    #[cfg(test)]
    pub(crate) fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Adds the field being decoded, as prost's derived `merge_field` does: innermost first.
    #[cold]
    pub(crate) fn push(mut self, message: &'static str, field: &'static str) -> Self {
        self.inner.stack.push((message, field));
        self
    }
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("failed to decode Protobuf message: ")?;
        for (message, field) in &self.inner.stack {
            write!(f, "{message}.{field}: ")?;
        }
        match self.inner.kind {
            ErrorKind::InvalidVarint => f.write_str("invalid varint"),
            ErrorKind::RecursionLimitReached => f.write_str("recursion limit reached"),
            ErrorKind::InvalidWireType(value) => write!(f, "invalid wire type value: {value}"),
            ErrorKind::InvalidKey(key) => write!(f, "invalid key value: {key}"),
            ErrorKind::InvalidTag => f.write_str("invalid tag value: 0"),
            ErrorKind::UnexpectedWireType { actual, expected } => {
                write!(f, "invalid wire type: {actual:?} (expected {expected:?})")
            }
            ErrorKind::BufferUnderflow => f.write_str("buffer underflow"),
            ErrorKind::DelimitedLengthExceeded => f.write_str("delimited length exceeded"),
            ErrorKind::UnexpectedEndGroupTag => f.write_str("unexpected end group tag"),
            ErrorKind::InvalidString => f.write_str("invalid string value: data is not UTF-8 encoded"),
        }
    }
}

impl fmt::Debug for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WalkError({self} at byte {})", self.inner.offset)
    }
}

impl std::error::Error for WalkError {}

/// A position in protobuf bytes. Like prost's `Buf`, reads inside a nested message walked with
/// `message` may run past that message's end (up to the cursor's end); the message checks
/// afterwards that its fields ended exactly at its end, so errors come out as prost's do.
pub struct Cursor<'a> {
    buf: &'a [u8],
    /// Always `<= buf.len()`.
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor over all of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// A cursor over `buf[range]` whose offsets stay those of `buf`: it starts at
    /// `range.start` and ends at `range.end`. Panics when `range` is not within `buf`.
    pub fn within(buf: &'a [u8], range: Range<usize>) -> Self {
        assert!(range.start <= range.end, "a cursor's range ends before it starts: {range:?}");
        Self { buf: &buf[..range.end], pos: range.start }
    }

    /// The offset of the next read.
    #[inline(always)]
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The bytes `range` of the cursor's buffer, offsets as the cursor's.
    #[inline(always)]
    pub fn get(&self, range: Range<usize>) -> Option<&'a [u8]> {
        self.buf.get(range)
    }

    /// Whether the cursor is at its end.
    #[inline(always)]
    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline(always)]
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[cold]
    fn error(&self, kind: ErrorKind) -> WalkError {
        WalkError::new(kind, self.pos)
    }

    /// A base-128 varint of at most 10 bytes whose 10th byte is 0 or 1 (prost's rule).
    #[inline(always)]
    fn read_varint(&mut self) -> Result<u64, WalkError> {
        match self.buf.get(self.pos) {
            Some(&byte) if byte < 0x80 => {
                self.pos += 1;
                Ok(u64::from(byte))
            }
            _ => self.read_varint_long(),
        }
    }

    #[inline(never)]
    fn read_varint_long(&mut self) -> Result<u64, WalkError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let mut value = 0u64;
        for (i, &byte) in rest.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                if i == 9 && byte >= 0x02 {
                    break;
                }
                self.pos += i + 1;
                return Ok(value);
            }
        }
        Err(self.error(ErrorKind::InvalidVarint))
    }

    /// A field key: (field number, wire type).
    #[inline(always)]
    pub fn key(&mut self) -> Result<(u32, WireType), WalkError> {
        let start = self.pos;
        let key = self.read_varint()?;
        let fail = |kind| Err(WalkError::new(kind, start));
        if key > u64::from(u32::MAX) {
            return fail(ErrorKind::InvalidKey(key));
        }
        let wire = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::SixtyFourBit,
            2 => WireType::LengthDelimited,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::ThirtyTwoBit,
            value => return fail(ErrorKind::InvalidWireType(value)),
        };
        let tag = (key as u32) >> 3;
        if tag == 0 {
            return fail(ErrorKind::InvalidTag);
        }
        Ok((tag, wire))
    }

    #[inline(always)]
    fn expect(&self, expected: WireType, actual: WireType) -> Result<(), WalkError> {
        if expected == actual {
            Ok(())
        } else {
            Err(self.error(ErrorKind::UnexpectedWireType { actual, expected }))
        }
    }

    /// Advances past `len` bytes, or fails as prost does when fewer remain.
    #[inline(always)]
    fn advance(&mut self, len: u64) -> Result<Range<usize>, WalkError> {
        if len > self.remaining() as u64 {
            return Err(self.error(ErrorKind::BufferUnderflow));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(start..self.pos)
    }

    /// A varint scalar (`int32`, `int64`, `uint32`, `uint64`, `bool`, enums): its raw value,
    /// which the field's type truncates as prost does (`as i32`, `!= 0`, …).
    #[inline(always)]
    pub fn varint(&mut self, wire: WireType) -> Result<u64, WalkError> {
        self.expect(WireType::Varint, wire)?;
        self.read_varint()
    }

    /// A `fixed64`, `sfixed64` or `double` scalar: its raw little-endian value.
    #[inline(always)]
    pub fn fixed64(&mut self, wire: WireType) -> Result<u64, WalkError> {
        self.expect(WireType::SixtyFourBit, wire)?;
        let range = self.advance(8)?;
        Ok(u64::from_le_bytes(self.buf[range].try_into().expect("8 bytes")))
    }

    /// A `fixed32`, `sfixed32` or `float` scalar: its raw little-endian value.
    #[inline(always)]
    pub fn fixed32(&mut self, wire: WireType) -> Result<u32, WalkError> {
        self.expect(WireType::ThirtyTwoBit, wire)?;
        let range = self.advance(4)?;
        Ok(u32::from_le_bytes(self.buf[range].try_into().expect("4 bytes")))
    }

    /// A `bytes` field, or an embedded message taken whole without looking into it: its
    /// contents' range.
    #[inline(always)]
    pub fn bytes(&mut self, wire: WireType) -> Result<Range<usize>, WalkError> {
        self.expect(WireType::LengthDelimited, wire)?;
        let len = self.read_varint()?;
        self.advance(len)
    }

    /// A `string` field.
    #[inline(always)]
    pub fn string(&mut self, wire: WireType) -> Result<&'a str, WalkError> {
        let range = self.bytes(wire)?;
        let start = range.start;
        std::str::from_utf8(&self.buf[range]).map_err(|_| WalkError::new(ErrorKind::InvalidString, start))
    }

    /// A `string` field: its contents' range, once they are known to be UTF-8.
    #[inline(always)]
    pub fn string_range(&mut self, wire: WireType) -> Result<Range<usize>, WalkError> {
        let range = self.bytes(wire)?;
        let bytes = &self.buf[range.clone()];
        // Most strings are ASCII, which `is_ascii` checks a word at a time.
        if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() {
            Ok(range)
        } else {
            Err(WalkError::new(ErrorKind::InvalidString, range.start))
        }
    }

    /// A nested message (prost's `message::merge`): `field` is called with each field's key and
    /// the recursion budget of the message's own fields. `depth` is the budget of the field
    /// holding the message.
    #[inline(always)]
    pub(crate) fn message<F>(&mut self, wire: WireType, depth: u32, mut field: F) -> Result<(), WalkError>
    where
        F: FnMut(&mut Self, u32, WireType, u32) -> Result<(), WalkError>,
    {
        self.expect(WireType::LengthDelimited, wire)?;
        if depth == 0 {
            return Err(self.error(ErrorKind::RecursionLimitReached));
        }
        let len = self.read_varint()?;
        if len > self.remaining() as u64 {
            return Err(self.error(ErrorKind::BufferUnderflow));
        }
        let end = self.pos + len as usize;
        while self.pos < end {
            let (tag, wire) = self.key()?;
            field(self, tag, wire, depth - 1)?;
        }
        if self.pos != end {
            return Err(WalkError::new(ErrorKind::DelimitedLengthExceeded, end));
        }
        Ok(())
    }

    /// Skips a field of an unknown `tag` as prost's `skip_field` does, groups included; `depth`
    /// is the recursion budget left ([`RECURSION_LIMIT`] at the top).
    pub fn skip(&mut self, wire: WireType, tag: u32, depth: u32) -> Result<(), WalkError> {
        if depth == 0 {
            return Err(self.error(ErrorKind::RecursionLimitReached));
        }
        let len = match wire {
            WireType::Varint => self.read_varint().map(|_| 0)?,
            WireType::ThirtyTwoBit => 4,
            WireType::SixtyFourBit => 8,
            WireType::LengthDelimited => self.read_varint()?,
            WireType::StartGroup => loop {
                let (inner_tag, inner_wire) = self.key()?;
                if inner_wire == WireType::EndGroup {
                    if inner_tag != tag {
                        return Err(self.error(ErrorKind::UnexpectedEndGroupTag));
                    }
                    break 0;
                }
                self.skip(inner_wire, inner_tag, depth - 1)?;
            },
            WireType::EndGroup => return Err(self.error(ErrorKind::UnexpectedEndGroupTag)),
        };
        self.advance(len).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_within_a_range_keeps_offsets_and_stops_at_its_end() {
        // Field 1 (fixed64), field 2 (fixed32), field 3 (string "hé"), field 4 (varint 300).
        let mut bytes = vec![0x09];
        bytes.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        bytes.push(0x15);
        bytes.extend_from_slice(&7u32.to_le_bytes());
        bytes.extend_from_slice(&[0x1a, 3, b'h', 0xc3, 0xa9, 0x20, 0xac, 0x02]);

        let mut c = Cursor::new(&bytes);
        assert_eq!(c.key().unwrap(), (1, WireType::SixtyFourBit));
        assert_eq!(c.fixed64(WireType::SixtyFourBit).unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(c.key().unwrap(), (2, WireType::ThirtyTwoBit));
        assert_eq!(c.fixed32(WireType::ThirtyTwoBit).unwrap(), 7);
        let (tag, wire) = c.key().unwrap();
        assert_eq!(tag, 3);
        let string = c.pos() + 1..c.pos() + 4;
        assert_eq!(Cursor::within(&bytes, string.clone()).remaining(), 3);
        assert_eq!(c.string(wire).unwrap(), "hé");
        assert_eq!(c.key().unwrap(), (4, WireType::Varint));
        assert_eq!(c.varint(WireType::Varint).unwrap(), 300);
        assert!(c.done());

        // The string's key and length, read over a range that ends inside its contents.
        let mut short = Cursor::within(&bytes, string.start - 2..string.start + 1);
        assert_eq!(short.key().unwrap(), (3, WireType::LengthDelimited));
        let error = short.string(WireType::LengthDelimited).unwrap_err();
        assert_eq!(error.to_string(), "failed to decode Protobuf message: buffer underflow");
        assert_eq!(error.offset(), string.start);
        assert_eq!(
            Cursor::new(&bytes).fixed32(WireType::SixtyFourBit).unwrap_err().to_string(),
            "failed to decode Protobuf message: invalid wire type: SixtyFourBit (expected ThirtyTwoBit)"
        );
    }
}
