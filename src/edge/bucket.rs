//! Bucket-level requests: listings (signed by Orca, passed through from the origin),
//! HeadBucket, GetBucketLocation and ListBuckets.

use super::{Answer, EdgeCtx, EdgeService};
use crate::error::{xml_escape_into, S3Error};
use crate::origin::ListRequest;
use bytes::Bytes;
use pingora::protocols::http::ServerSession as Session;

const S3_XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

impl EdgeService {
    pub(super) async fn list_objects(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
        bucket: &str,
        request: &ListRequest,
    ) -> Answer {
        let result = self.orca.origin.list(bucket, request).await;
        self.orca.health.record_for(bucket, None, &result);
        let body = result.map_err(|e| e.to_s3())?;
        self.write_body(session, ctx, 200, "application/xml", body, &[])
            .await
    }

    pub(super) async fn head_bucket(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
        bucket: &str,
    ) -> Answer {
        let result = self.orca.origin.head_bucket(bucket).await;
        self.orca.health.record_for(bucket, None, &result);
        result.map_err(|e| e.to_s3())?;
        self.write_body(session, ctx, 200, "application/xml", Bytes::new(), &[])
            .await
    }

    pub(super) async fn bucket_location(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
        bucket: &str,
    ) -> Answer {
        self.orca
            .origin
            .head_bucket(bucket)
            .await
            .map_err(|e| e.to_s3())?;
        let body = location_xml(self.orca.origin.region());
        self.write_body(session, ctx, 200, "application/xml", body, &[])
            .await
    }

    pub(super) async fn list_buckets(&self, session: &mut Session, ctx: &mut EdgeCtx) -> Answer {
        // Only the buckets the caller's key may read.
        let Some(buckets) = ctx.access.visible_buckets(&self.orca.config.edge.buckets) else {
            return Err(S3Error::new(
                501,
                "NotImplemented",
                "Listing buckets needs an allowlist (edge.buckets) in Orca's configuration.",
            ));
        };
        let body = list_buckets_xml(&buckets);
        self.write_body(session, ctx, 200, "application/xml", body, &[])
            .await
    }
}

/// GetBucketLocation's answer: S3 answers an empty constraint for us-east-1.
fn location_xml(region: &str) -> Bytes {
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"{S3_XMLNS}\""
    );
    if region.is_empty() || region == "us-east-1" {
        s.push_str("/>");
    } else {
        s.push('>');
        xml_escape_into(&mut s, region);
        s.push_str("</LocationConstraint>");
    }
    Bytes::from(s)
}

/// ListAllMyBucketsResult for the allowlist. Creation dates are unknown to a cache; S3 clients
/// require one, so the Unix epoch stands in.
fn list_buckets_xml(buckets: &[String]) -> Bytes {
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListAllMyBucketsResult xmlns=\"{S3_XMLNS}\">\
         <Owner><ID>orca</ID><DisplayName>orca</DisplayName></Owner><Buckets>"
    );
    for b in buckets {
        s.push_str("<Bucket><Name>");
        xml_escape_into(&mut s, b);
        s.push_str("</Name><CreationDate>1970-01-01T00:00:00.000Z</CreationDate></Bucket>");
    }
    s.push_str("</Buckets></ListAllMyBucketsResult>");
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_answers_as_s3() {
        let us = location_xml("us-east-1");
        assert!(std::str::from_utf8(&us)
            .unwrap()
            .ends_with(&format!("<LocationConstraint xmlns=\"{S3_XMLNS}\"/>")));
        let eu = location_xml("eu-west-1");
        assert!(std::str::from_utf8(&eu)
            .unwrap()
            .contains(">eu-west-1</LocationConstraint>"));
    }

    #[test]
    fn bucket_list_names_the_allowlist() {
        let xml = list_buckets_xml(&["a".into(), "b&c".into()]);
        let s = std::str::from_utf8(&xml).unwrap();
        assert!(s.contains("<Name>a</Name>") && s.contains("<Name>b&amp;c</Name>"));
    }
}
