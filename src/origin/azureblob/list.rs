//! List Blobs answered as S3 ListObjectsV2 / ListObjects (v1) XML.
//!
//! Three pure parts, each unit-tested without I/O:
//!
//! - [`parse_enumeration`] reads one Azure `EnumerationResults` page.
//! - [`collect`] pages through Azure (through a `fetch` callback) to fill one S3 page. S3's
//!   positions are keys (`start-after`, a v1 `marker` taken from the last key) and Azure's are
//!   opaque markers that cannot be built from a key, so a [`Cursor`] carries both: the Azure
//!   marker of the page to resume from, and a key at or below which entries are skipped. Orca's
//!   own continuation tokens and v1 `NextMarker`s are encoded cursors; a plain key (S3's
//!   `start-after`, or a v1 marker a client took from the last key) is a cursor without a marker,
//!   emulated by listing from the start and skipping.
//! - [`render`] writes the S3 XML (`encoding-type=url` honoured).
//!
//! Entries are compared by their UTF-8 bytes, the order both Azure and S3 list in. An entry (a
//! key or a common prefix) is returned only when it sorts after the cursor's key, so a v1
//! `NextMarker` naming a common prefix never repeats it.

use crate::error::{xml_entity, xml_escape_into};
use crate::net::encode::encode_key;
use crate::origin::{unquote_etag, ListRequest, OriginError};
use bytes::Bytes;
use quick_xml::events::Event;
use quick_xml::Reader;
use std::fmt::Write as _;
use std::future::Future;

/// Largest `maxresults` Azure accepts.
pub const AZURE_MAX_RESULTS: u32 = 5000;

/// S3's default and largest `max-keys`.
pub const S3_MAX_KEYS: u32 = 1000;

/// Azure pages read for one S3 page at most; past it the S3 page is returned short (still
/// truncated, with a token), so one request never walks a whole huge container.
pub const MAX_ORIGIN_PAGES: usize = 20;

const S3_XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Prefix of Orca's continuation tokens (and v1 `NextMarker`s) for Azure listings.
const TOKEN_PREFIX: &str = "az1.";

/// One entry of a listing: a blob, or a `BlobPrefix` (an S3 common prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A blob.
    Blob {
        /// The blob name (decoded).
        name: String,
        /// `Content-Length`.
        size: u64,
        /// The ETag, without quotes.
        etag: String,
        /// `Last-Modified` as Azure wrote it (RFC 1123).
        last_modified: String,
    },
    /// A `BlobPrefix` (with a delimiter).
    Prefix(String),
}

impl Entry {
    /// The name it sorts by.
    pub fn name(&self) -> &str {
        match self {
            Entry::Blob { name, .. } | Entry::Prefix(name) => name,
        }
    }
}

/// One Azure List Blobs page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AzurePage {
    /// Blobs and prefixes, sorted by name.
    pub entries: Vec<Entry>,
    /// Where the next page starts; `None` on the last page.
    pub next_marker: Option<String>,
}

/// Reads an Azure `EnumerationResults` document. Names marked `Encoded="true"` (names with
/// characters XML cannot carry) are percent-decoded.
pub fn parse_enumeration(xml: &[u8]) -> Result<AzurePage, String> {
    let mut reader = Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut text = String::new();
    let mut encoded = false;
    let mut page = AzurePage::default();
    let mut blob = BlobFields::default();
    let mut prefix: Option<String> = None;
    // Bounded by the document: each pass consumes at least one event, Eof ends the loop.
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("List Blobs XML at {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_vec();
                if name == b"Name" {
                    encoded = e
                        .try_get_attribute("Encoded")
                        .ok()
                        .flatten()
                        .is_some_and(|a| a.value.as_ref() == b"true");
                }
                stack.push(name);
                text.clear();
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| format!("List Blobs XML: {e}"))?;
                text.push_str(&s);
            }
            Event::CData(t) => {
                let s = t.decode().map_err(|e| format!("List Blobs XML: {e}"))?;
                text.push_str(&s);
            }
            Event::GeneralRef(r) => {
                text.push(xml_entity(&r).map_err(|e| format!("List Blobs XML: {e}"))?);
            }
            Event::End(_) => {
                let Some(name) = stack.pop() else {
                    return Err("List Blobs XML: unbalanced end tag".into());
                };
                let parent = stack.last().map(Vec::as_slice);
                let value = std::mem::take(&mut text);
                match (name.as_slice(), parent) {
                    (b"Name", Some(b"Blob")) => blob.name = Some(decode_name(value, encoded)?),
                    (b"Name", Some(b"BlobPrefix")) => prefix = Some(decode_name(value, encoded)?),
                    (b"Content-Length", Some(b"Properties")) => {
                        blob.size =
                            Some(value.trim().parse().map_err(|_| {
                                format!("List Blobs XML: Content-Length {value:?}")
                            })?);
                    }
                    (b"Etag", Some(b"Properties")) => blob.etag = Some(value),
                    (b"Last-Modified", Some(b"Properties")) => blob.last_modified = Some(value),
                    (b"Blob", _) => page.entries.push(std::mem::take(&mut blob).finish()?),
                    (b"BlobPrefix", _) => {
                        let p = prefix
                            .take()
                            .ok_or("List Blobs XML: BlobPrefix without a Name")?;
                        page.entries.push(Entry::Prefix(p));
                    }
                    (b"NextMarker", Some(b"EnumerationResults")) if !value.is_empty() => {
                        page.next_marker = Some(value);
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            // `<NextMarker/>`, empty properties, declarations: nothing to record.
            _ => {}
        }
        buf.clear();
    }
    // Azure interleaves blobs and prefixes by name, Azurite writes all blobs first: sort, so a
    // page is one ascending run either way.
    page.entries
        .sort_by(|a, b| a.name().as_bytes().cmp(b.name().as_bytes()));
    Ok(page)
}

#[derive(Default)]
struct BlobFields {
    name: Option<String>,
    size: Option<u64>,
    etag: Option<String>,
    last_modified: Option<String>,
}

impl BlobFields {
    fn finish(self) -> Result<Entry, String> {
        Ok(Entry::Blob {
            name: self.name.ok_or("List Blobs XML: Blob without a Name")?,
            size: self.size.unwrap_or(0),
            etag: unquote_etag(self.etag.as_deref().unwrap_or("")).to_string(),
            last_modified: self.last_modified.unwrap_or_default(),
        })
    }
}

fn decode_name(value: String, encoded: bool) -> Result<String, String> {
    if !encoded {
        return Ok(value);
    }
    percent_encoding::percent_decode_str(&value)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("List Blobs XML: encoded name {value:?} is not UTF-8"))
}

/// Where an S3 page starts: resume Azure at `marker` (`None`: the beginning) and skip entries
/// whose name sorts at or below `after`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The Azure marker of the page to read first.
    pub marker: Option<String>,
    /// Entries at or below this name were returned already (or precede `start-after`).
    pub after: Option<String>,
    /// The `maxresults` the page at `marker` was read with, when the last S3 page stopped
    /// inside it: reading it again the same way gives the same page, so nothing is skipped
    /// twice and nothing is missed.
    pub size: Option<u32>,
}

impl Cursor {
    /// The cursor a client's `continuation-token` or v1 `marker` names: one of Orca's tokens, or
    /// (anything else) a key to list after, as S3 reads `start-after` and v1 markers.
    pub fn from_client(value: &str) -> Cursor {
        Cursor::decode(value).unwrap_or_else(|| Cursor {
            marker: None,
            after: Some(value.to_string()),
            size: None,
        })
    }

    /// The token: `az1.` and the base64url of the fields, each length-prefixed. Only URL-safe
    /// characters, so `encoding-type=url` leaves it unchanged.
    pub fn encode(&self) -> String {
        let mut raw = Vec::new();
        let size = self.size.map(|n| n.to_string());
        for field in [&self.marker, &self.after, &size] {
            match field {
                None => raw.push(b'-'),
                Some(v) => {
                    raw.push(b'+');
                    raw.extend_from_slice(v.len().to_string().as_bytes());
                    raw.push(b':');
                    raw.extend_from_slice(v.as_bytes());
                }
            }
        }
        format!(
            "{TOKEN_PREFIX}{}",
            azure_core::base64::encode_url_safe(raw).trim_end_matches('=')
        )
    }

    /// Reads a token written by [`Cursor::encode`]; `None` for anything else.
    pub fn decode(token: &str) -> Option<Cursor> {
        let body = token.strip_prefix(TOKEN_PREFIX)?;
        let raw = azure_core::base64::decode_url_safe(body).ok()?;
        let mut rest = raw.as_slice();
        let mut fields = [None, None, None];
        for field in &mut fields {
            let (&tag, tail) = rest.split_first()?;
            rest = tail;
            match tag {
                b'-' => {}
                b'+' => {
                    let colon = rest.iter().position(|&b| b == b':')?;
                    let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
                    let value = rest.get(colon + 1..colon + 1 + len)?;
                    *field = Some(String::from_utf8(value.to_vec()).ok()?);
                    rest = &rest[colon + 1 + len..];
                }
                _ => return None,
            }
        }
        if !rest.is_empty() {
            return None;
        }
        let [marker, after, size] = fields;
        let size = match size {
            Some(n) => Some(n.parse().ok()?),
            None => None,
        };
        Some(Cursor {
            marker,
            after,
            size,
        })
    }
}

/// One S3 page: the entries in order, and where the next page starts when truncated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Keys and common prefixes, ascending.
    pub entries: Vec<Entry>,
    /// `Some` when truncated: the next page's cursor.
    pub next: Option<Cursor>,
}

/// Fills one S3 page of at most `max_keys` entries from `cursor`, reading Azure pages with
/// `fetch(marker, maxresults)` (at most [`MAX_ORIGIN_PAGES`] of them).
///
/// Azure counts `BlobPrefix` entries in `maxresults` as S3 counts common prefixes in
/// `max-keys`, so in the common case an S3 page is one Azure page of the same size and the token
/// is Azure's `NextMarker`. When Azure returns more than fits (while skipping to a
/// `start-after`, or resuming inside a page), the rest is left for the next S3 page: its cursor
/// is this Azure page's marker plus the last name returned.
pub async fn collect<F, Fut>(
    cursor: Cursor,
    max_keys: u32,
    mut fetch: F,
) -> Result<Collected, OriginError>
where
    F: FnMut(Option<String>, u32) -> Fut,
    Fut: Future<Output = Result<AzurePage, OriginError>>,
{
    let max = max_keys.min(S3_MAX_KEYS) as usize;
    let Cursor {
        mut marker,
        after,
        mut size,
    } = cursor;
    if max == 0 {
        // Nothing to return, but a missing container must still say so.
        fetch(marker, 1).await?;
        return Ok(Collected::default());
    }
    // Skipping to a key from the very start: read big pages until past it.
    let mut skipping = marker.is_none() && after.is_some();
    let mut floor = after;
    let mut out: Vec<Entry> = Vec::new();
    for _ in 0..MAX_ORIGIN_PAGES {
        let needed = (max - out.len()) as u32;
        let ask = size
            .take()
            .unwrap_or(if skipping { AZURE_MAX_RESULTS } else { needed })
            .clamp(1, AZURE_MAX_RESULTS);
        let page = fetch(marker.clone(), ask).await?;
        let mut left_over = false;
        for entry in page.entries {
            let name = entry.name();
            if floor
                .as_deref()
                .is_some_and(|f| name.as_bytes() <= f.as_bytes())
            {
                continue;
            }
            skipping = false;
            if out.len() == max {
                left_over = true;
                break;
            }
            floor = Some(name.to_string());
            out.push(entry);
        }
        if left_over {
            return Ok(Collected {
                entries: out,
                next: Some(Cursor {
                    marker,
                    after: floor,
                    size: Some(ask),
                }),
            });
        }
        let Some(next) = page.next_marker else {
            return Ok(Collected {
                entries: out,
                next: None,
            });
        };
        marker = Some(next);
        if out.len() == max {
            // The page ended exactly here: the next starts at Azure's marker. The floor stays
            // so a prefix Azure repeats across pages is not listed twice.
            return Ok(Collected {
                entries: out,
                next: Some(Cursor {
                    marker,
                    after: floor,
                    size: None,
                }),
            });
        }
    }
    Ok(Collected {
        entries: out,
        next: Some(Cursor {
            marker,
            after: floor,
            size: None,
        }),
    })
}

/// Converts Azure's `Last-Modified` (RFC 1123) to S3's `2026-11-23T05:18:45.000Z`.
pub fn s3_time(rfc1123: &str) -> String {
    match azure_core::time::parse_rfc7231(rfc1123.trim()) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        // Unreadable: the epoch, rather than a date S3 clients cannot parse.
        Err(_) => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

/// Writes the S3 `ListBucketResult` for `request` (v2 or v1).
pub fn render(bucket: &str, request: &ListRequest, max_keys: u32, page: &Collected) -> Bytes {
    let enc = |s: &str| {
        if request.encoding_url {
            encode_key(s)
        } else {
            s.to_string()
        }
    };
    let mut x = String::with_capacity(256 + page.entries.len() * 256);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = write!(x, "<ListBucketResult xmlns=\"{S3_XMLNS}\">");
    elem(&mut x, "Name", bucket);
    elem(
        &mut x,
        "Prefix",
        &enc(request.prefix.as_deref().unwrap_or("")),
    );
    let token = page.next.as_ref().map(Cursor::encode);
    if request.v2 {
        if let Some(t) = &request.continuation_token {
            elem(&mut x, "ContinuationToken", t);
        }
        if let Some(s) = &request.start_after {
            elem(&mut x, "StartAfter", &enc(s));
        }
        elem(&mut x, "KeyCount", &page.entries.len().to_string());
    } else {
        elem(
            &mut x,
            "Marker",
            &enc(request.marker.as_deref().unwrap_or("")),
        );
        if let Some(t) = &token {
            // S3 sends NextMarker only with a delimiter; clients prefer it whenever present,
            // and Orca's token resumes at Azure's marker instead of skipping from the start.
            elem(&mut x, "NextMarker", &enc(t));
        }
    }
    elem(&mut x, "MaxKeys", &max_keys.to_string());
    if let Some(d) = request.delimiter.as_deref().filter(|d| !d.is_empty()) {
        elem(&mut x, "Delimiter", &enc(d));
    }
    if request.encoding_url {
        elem(&mut x, "EncodingType", "url");
    }
    elem(
        &mut x,
        "IsTruncated",
        if page.next.is_some() { "true" } else { "false" },
    );
    if request.v2 {
        if let Some(t) = &token {
            elem(&mut x, "NextContinuationToken", t);
        }
    }
    for entry in &page.entries {
        if let Entry::Blob {
            name,
            size,
            etag,
            last_modified,
        } = entry
        {
            x.push_str("<Contents>");
            elem(&mut x, "Key", &enc(name));
            elem(&mut x, "LastModified", &s3_time(last_modified));
            elem(&mut x, "ETag", &format!("\"{etag}\""));
            elem(&mut x, "Size", &size.to_string());
            elem(&mut x, "StorageClass", "STANDARD");
            x.push_str("</Contents>");
        }
    }
    for entry in &page.entries {
        if let Entry::Prefix(p) = entry {
            x.push_str("<CommonPrefixes>");
            elem(&mut x, "Prefix", &enc(p));
            x.push_str("</CommonPrefixes>");
        }
    }
    x.push_str("</ListBucketResult>");
    Bytes::from(x)
}

fn elem(out: &mut String, name: &str, text: &str) {
    let _ = write!(out, "<{name}>");
    xml_escape_into(out, text);
    let _ = write!(out, "</{name}>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const AZURE_PAGE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="c">
  <Prefix>dir/</Prefix><MaxResults>3</MaxResults><Delimiter>/</Delimiter>
  <Blobs>
    <Blob><Name>dir/b &amp; c.txt</Name><Properties>
      <Creation-Time>Mon, 02 Mar 2026 10:00:00 GMT</Creation-Time>
      <Last-Modified>Mon, 02 Mar 2026 10:00:01 GMT</Last-Modified>
      <Etag>0x8DC1</Etag><Content-Length>11</Content-Length>
      <Content-Type>text/plain</Content-Type><BlobType>BlockBlob</BlobType>
    </Properties><Metadata/></Blob>
    <Blob><Name Encoded="true">dir/%01ctl</Name><Properties>
      <Last-Modified>Tue, 03 Mar 2026 23:59:59 GMT</Last-Modified>
      <Etag>"0x8DC2"</Etag><Content-Length>0</Content-Length><BlobType>PageBlob</BlobType>
    </Properties></Blob>
    <BlobPrefix><Name>dir/a/</Name></BlobPrefix>
  </Blobs>
  <NextMarker>opaque!marker</NextMarker>
</EnumerationResults>"#;

    #[test]
    fn azure_pages_parse_sorted() {
        let page = parse_enumeration(AZURE_PAGE.as_bytes()).unwrap();
        assert_eq!(page.next_marker.as_deref(), Some("opaque!marker"));
        let names: Vec<&str> = page.entries.iter().map(Entry::name).collect();
        assert_eq!(names, ["dir/\u{1}ctl", "dir/a/", "dir/b & c.txt"]);
        assert_eq!(
            page.entries[2],
            Entry::Blob {
                name: "dir/b & c.txt".into(),
                size: 11,
                etag: "0x8DC1".into(),
                last_modified: "Mon, 02 Mar 2026 10:00:01 GMT".into(),
            }
        );
        assert!(
            matches!(&page.entries[0], Entry::Blob { etag, .. } if etag == "0x8DC2"),
            "{page:?}"
        );
        let last =
            parse_enumeration(b"<EnumerationResults><Blobs/><NextMarker/></EnumerationResults>")
                .unwrap();
        assert_eq!(last, AzurePage::default());
        assert!(parse_enumeration(b"<EnumerationResults><Blobs><Blob>")
            .is_ok_and(|p| p.entries.is_empty()));
        assert!(parse_enumeration(b"<a></b>").is_err());
    }

    #[test]
    fn times_convert_to_s3() {
        assert_eq!(
            s3_time("Mon, 23 Nov 2026 05:18:45 GMT"),
            "2026-11-23T05:18:45.000Z"
        );
        assert_eq!(s3_time("garbage"), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn cursors_round_trip_and_keys_are_not_tokens() {
        for c in [
            Cursor::default(),
            Cursor {
                marker: Some("2!96!MDAw+/=".into()),
                after: Some("ünï code/+%  ".into()),
                size: Some(5000),
            },
            Cursor {
                marker: None,
                after: Some(String::new()),
                size: None,
            },
        ] {
            let t = c.encode();
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "{t}"
            );
            assert_eq!(encode_key(&t), t);
            assert_eq!(Cursor::decode(&t), Some(c.clone()));
            assert_eq!(Cursor::from_client(&t), c);
        }
        assert_eq!(
            Cursor::from_client("dir/key.txt"),
            Cursor {
                marker: None,
                after: Some("dir/key.txt".into()),
                size: None,
            }
        );
        assert_eq!(Cursor::decode("az1.!!"), None);
        assert_eq!(Cursor::decode("az1."), None);
    }

    /// An in-memory Azure: sorted names, pages of at most `maxresults` (and at most `cap`, as
    /// Azure may return fewer), markers that are opaque indexes, prefixes rolled up.
    struct FakeAzure {
        names: Vec<String>,
        delimiter: Option<String>,
        cap: usize,
        calls: Mutex<Vec<(Option<String>, u32)>>,
    }

    impl FakeAzure {
        fn new(names: &[&str], delimiter: Option<&str>, cap: usize) -> Self {
            let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            names.sort();
            Self {
                names,
                delimiter: delimiter.map(str::to_string),
                cap,
                calls: Mutex::new(Vec::new()),
            }
        }

        fn page(&self, marker: Option<String>, n: u32) -> Result<AzurePage, OriginError> {
            self.calls.lock().unwrap().push((marker.clone(), n));
            let mut i: usize =
                marker.map_or(0, |m| m.strip_prefix("idx").unwrap().parse().unwrap());
            let mut entries = Vec::new();
            let limit = (n as usize).min(self.cap);
            while i < self.names.len() && entries.len() < limit {
                let name = &self.names[i];
                let rolled = self
                    .delimiter
                    .as_deref()
                    .and_then(|d| name.find(d).map(|at| name[..at + d.len()].to_string()));
                match rolled {
                    Some(p) => {
                        while i < self.names.len() && self.names[i].starts_with(&p) {
                            i += 1;
                        }
                        entries.push(Entry::Prefix(p));
                    }
                    None => {
                        entries.push(Entry::Blob {
                            name: name.clone(),
                            size: 1,
                            etag: "e".into(),
                            last_modified: String::new(),
                        });
                        i += 1;
                    }
                }
            }
            Ok(AzurePage {
                entries,
                next_marker: (i < self.names.len()).then(|| format!("idx{i}")),
            })
        }
    }

    fn list_all(az: &FakeAzure, start: Cursor, max_keys: u32) -> (Vec<String>, usize) {
        let mut cursor = start;
        let mut names = Vec::new();
        for pages in 1..1000 {
            let got = futures_lite_block_on(collect(cursor, max_keys, |m, n| {
                std::future::ready(az.page(m, n))
            }))
            .unwrap();
            assert!(got.entries.len() <= max_keys as usize);
            names.extend(got.entries.iter().map(|e| e.name().to_string()));
            match got.next {
                Some(c) => cursor = Cursor::decode(&c.encode()).unwrap(),
                None => return (names, pages),
            }
        }
        panic!("no end");
    }

    /// A tiny executor for futures that never pend (the fake answers at once).
    fn futures_lite_block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn keys() -> Vec<String> {
        let mut v: Vec<String> = (0..23).map(|i| format!("k{i:02}")).collect();
        v.extend(["a/1", "a/2", "a/3", "b", "c/x/y", "c/z"].map(String::from));
        v
    }

    #[test]
    fn pagination_lists_everything_once() {
        let k = keys();
        let refs: Vec<&str> = k.iter().map(String::as_str).collect();
        let mut want = k.clone();
        want.sort();
        for cap in [1, 2, 5, 5000] {
            for max in [1, 3, 4, 1000] {
                let az = FakeAzure::new(&refs, None, cap);
                let (got, pages) = list_all(&az, Cursor::default(), max);
                assert_eq!(got, want, "cap {cap} max {max}");
                if cap >= max as usize {
                    assert_eq!(pages, want.len().div_ceil(max as usize).max(1));
                }
            }
        }
    }

    #[test]
    fn delimiters_roll_up_once_across_pages() {
        let k = keys();
        let refs: Vec<&str> = k.iter().map(String::as_str).collect();
        let az = FakeAzure::new(&refs, Some("/"), 5000);
        let (got, _) = list_all(&az, Cursor::default(), 2);
        let mut want: Vec<String> = (0..23).map(|i| format!("k{i:02}")).collect();
        want.extend(["a/", "b", "c/"].map(String::from));
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn start_after_and_key_markers_skip() {
        let k = keys();
        let refs: Vec<&str> = k.iter().map(String::as_str).collect();
        let mut sorted = k.clone();
        sorted.sort();
        for after in ["", "a/2", "k05", "k22", "zzz", "a/"] {
            let az = FakeAzure::new(&refs, None, 5000);
            let (got, _) = list_all(&az, Cursor::from_client(after), 4);
            let want: Vec<String> = sorted
                .iter()
                .filter(|n| n.as_str() > after)
                .cloned()
                .collect();
            assert_eq!(got, want, "after {after:?}");
        }
        // A common prefix used as a v1 marker is not listed again.
        let az = FakeAzure::new(&refs, Some("/"), 5000);
        let (got, _) = list_all(&az, Cursor::from_client("a/"), 1000);
        assert_eq!(got.first().map(String::as_str), Some("b"));
    }

    #[test]
    fn steady_pages_read_azure_once_each() {
        let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let az = FakeAzure::new(&refs, None, 5000);
        let (got, pages) = list_all(&az, Cursor::default(), 3);
        assert_eq!(got.len(), 10);
        assert_eq!(pages, 4);
        let calls = az.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                (None, 3),
                (Some("idx3".into()), 3),
                (Some("idx6".into()), 3),
                (Some("idx9".into()), 3)
            ]
        );
    }

    #[test]
    fn zero_max_keys_still_checks_the_container() {
        let az = FakeAzure::new(&["a"], None, 5000);
        let got = futures_lite_block_on(collect(Cursor::default(), 0, |m, n| {
            std::future::ready(az.page(m, n))
        }))
        .unwrap();
        assert_eq!(got, Collected::default());
        assert_eq!(az.calls.lock().unwrap().len(), 1);
        let failed = futures_lite_block_on(collect(Cursor::default(), 5, |_, _| {
            std::future::ready(Err::<AzurePage, _>(OriginError::BucketNotFound))
        }));
        assert_eq!(failed, Err(OriginError::BucketNotFound));
    }

    #[test]
    fn s3_xml_v2_and_v1() {
        let page = Collected {
            entries: vec![
                Entry::Prefix("d/sub dir/".into()),
                Entry::Blob {
                    name: "d/a+b <c>.txt".into(),
                    size: 5,
                    etag: "0x8DC".into(),
                    last_modified: "Mon, 02 Mar 2026 10:00:01 GMT".into(),
                },
            ],
            next: Some(Cursor {
                marker: Some("m".into()),
                after: Some("d/sub dir/".into()),
                size: None,
            }),
        };
        let v2 = ListRequest {
            v2: true,
            prefix: Some("d/".into()),
            delimiter: Some("/".into()),
            start_after: Some("d/0 0".into()),
            encoding_url: true,
            ..ListRequest::default()
        };
        let xml = String::from_utf8(render("bkt", &v2, 2, &page).to_vec()).unwrap();
        let token = page.next.as_ref().unwrap().encode();
        for want in [
            "<Name>bkt</Name><Prefix>d/</Prefix><StartAfter>d/0%200</StartAfter><KeyCount>2</KeyCount>",
            "<MaxKeys>2</MaxKeys><Delimiter>/</Delimiter><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>",
            &format!("<NextContinuationToken>{token}</NextContinuationToken>"),
            "<Contents><Key>d/a%2Bb%20%3Cc%3E.txt</Key><LastModified>2026-03-02T10:00:01.000Z</LastModified><ETag>&quot;0x8DC&quot;</ETag><Size>5</Size><StorageClass>STANDARD</StorageClass></Contents>",
            "<CommonPrefixes><Prefix>d/sub%20dir/</Prefix></CommonPrefixes></ListBucketResult>",
        ] {
            assert!(xml.contains(want), "{want}\n{xml}");
        }
        let v1 = ListRequest {
            marker: Some("a<b".into()),
            ..ListRequest::default()
        };
        let xml = String::from_utf8(render("bkt", &v1, 1000, &page).to_vec()).unwrap();
        assert!(xml.contains("<Key>d/a+b &lt;c&gt;.txt</Key>"), "{xml}");
        assert!(xml.contains("<Marker>a&lt;b</Marker>"), "{xml}");
        assert!(
            xml.contains(&format!("<NextMarker>{token}</NextMarker>")),
            "{xml}"
        );
        assert!(
            !xml.contains("KeyCount") && !xml.contains("Delimiter"),
            "{xml}"
        );
        let done = Collected::default();
        let xml = String::from_utf8(render("bkt", &v1, 1000, &done).to_vec()).unwrap();
        assert!(xml.contains("<IsTruncated>false</IsTruncated>") && !xml.contains("NextMarker"));
    }
}
