//! A strict RFC 4180 reader, fed the export's body a chunk at a time as it downloads.
use anyhow::{bail, ensure};

/// The fields of one record, decoded.
pub(super) struct Record<'a> {
    buf: &'a [u8],
    ends: &'a [usize],
}

impl Record<'_> {
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn field(&self, k: usize) -> &[u8] {
        let start = if k == 0 { 0 } else { self.ends[k - 1] };
        &self.buf[start..self.ends[k]]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum CsvState {
    #[default]
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: the closing one, or the first of a doubled pair.
    QuoteInQuoted,
    /// A CR outside quotes: the LF must follow.
    Cr,
}

/// A strict RFC 4180 reader (CRLF record ends, quotes doubled inside quoted fields, no
/// quote in an unquoted one) fed a chunk at a time; chunks may split records anywhere.
#[derive(Default)]
pub(super) struct CsvReader {
    state: CsvState,
    buf: Vec<u8>,
    ends: Vec<usize>,
    /// Bytes before the current record, for error messages.
    offset: u64,
    record_len: u64,
}

impl CsvReader {
    pub(super) fn feed(
        &mut self,
        chunk: &[u8],
        mut on_record: impl FnMut(Record<'_>),
    ) -> anyhow::Result<()> {
        use CsvState::*;
        for &b in chunk {
            self.record_len += 1;
            self.state = match (self.state, b) {
                (FieldStart, b'"') => Quoted,
                (FieldStart | Unquoted | QuoteInQuoted, b',') => {
                    self.ends.push(self.buf.len());
                    FieldStart
                }
                (FieldStart | Unquoted | QuoteInQuoted, b'\r') => {
                    self.ends.push(self.buf.len());
                    Cr
                }
                (Unquoted, b'"') => bail!(
                    "a quote inside an unquoted field, in the record at byte {}",
                    self.offset
                ),
                (FieldStart | Unquoted, b'\n') => {
                    bail!("a bare LF ends the record at byte {}", self.offset)
                }
                (FieldStart | Unquoted, _) => {
                    self.buf.push(b);
                    Unquoted
                }
                (Quoted, b'"') => QuoteInQuoted,
                (Quoted, _) => {
                    self.buf.push(b);
                    Quoted
                }
                (QuoteInQuoted, b'"') => {
                    self.buf.push(b'"');
                    Quoted
                }
                (QuoteInQuoted, _) => bail!(
                    "text after a closing quote, in the record at byte {}",
                    self.offset
                ),
                (Cr, b'\n') => {
                    on_record(Record {
                        buf: &self.buf,
                        ends: &self.ends,
                    });
                    self.buf.clear();
                    self.ends.clear();
                    self.offset += self.record_len;
                    self.record_len = 0;
                    FieldStart
                }
                (Cr, _) => bail!("a CR without LF, in the record at byte {}", self.offset),
            };
        }
        Ok(())
    }

    /// Fails when the body ended inside a record.
    pub(super) fn finish(&self) -> anyhow::Result<()> {
        ensure!(
            self.state == CsvState::FieldStart && self.buf.is_empty() && self.ends.is_empty(),
            "the body ends inside a record (at byte {})",
            self.offset
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(chunks: &[&[u8]]) -> anyhow::Result<Vec<Vec<String>>> {
        let mut reader = CsvReader::default();
        let mut out = Vec::new();
        for chunk in chunks {
            reader.feed(chunk, |r| {
                out.push(
                    (0..r.len())
                        .map(|k| String::from_utf8_lossy(r.field(k)).into_owned())
                        .collect(),
                );
            })?;
        }
        reader.finish()?;
        Ok(out)
    }

    #[test]
    fn the_reader_decodes_quoted_fields_split_across_chunks() -> anyhow::Result<()> {
        let got = records(&[
            b"a,\"b,\"\"c\"\"",
            b"\r\nd\",,\" e \"\r",
            b"\n\xf0\x9f\x98\x80,x\r\n",
        ])?;
        assert_eq!(
            got,
            vec![
                vec![
                    "a".to_owned(),
                    "b,\"c\"\r\nd".to_owned(),
                    String::new(),
                    " e ".to_owned()
                ],
                vec!["😀".to_owned(), "x".to_owned()],
            ]
        );
        Ok(())
    }

    #[test]
    fn the_reader_refuses_what_rfc_4180_does_not_allow() {
        assert!(
            records(&[b"a\"b\r\n"]).is_err(),
            "quote in an unquoted field"
        );
        assert!(records(&[b"a,b\n"]).is_err(), "bare LF");
        assert!(
            records(&[b"\"a\"b\r\n"]).is_err(),
            "text after a closing quote"
        );
        assert!(records(&[b"a,b"]).is_err(), "no final CRLF");
        assert!(records(&[b"\"a\r\n"]).is_err(), "unclosed quote");
    }
}
