//! Delivery status notifications (RFC 3464) for recipients that failed for good.

use levee_spool::SpoolMeta;
use levee_types::{Address, Body, Envelope, Reply};
use std::net::{IpAddr, Ipv4Addr};

/// Builds the bounce: envelope from `<>` to the original sender, a
/// multipart/report with a human part, the delivery-status part and the
/// original headers (not the body: bounces must not carry spam back out).
pub fn build(
    hostname: &str,
    meta: &SpoolMeta,
    original: &[u8],
    sender: &Address,
    failed: &[(String, Reply, String)],
    now: u64,
) -> (Envelope, Vec<u8>) {
    let boundary = format!("{}.{}/{}", meta.id, now, hostname);
    let date = crate::headers::rfc5322_date(now);
    let mut m = String::new();
    m.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"));
    m.push_str(&format!("To: <{sender}>\r\n"));
    m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    m.push_str(&format!("Date: {date}\r\n"));
    m.push_str(&format!("Message-ID: <{}.{}.dsn@{}>\r\n", meta.id, now, hostname));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    m.push_str(&format!("--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"));
    m.push_str(&format!(
        "This is the mail gateway at {hostname}.\r\n\r\nYour message could not be delivered to \
         the following recipients:\r\n\r\n"
    ));
    for (rcpt, reply, _) in failed {
        m.push_str(&format!("  <{rcpt}>: {}\r\n", one_line(&reply.to_string())));
    }
    m.push_str(&format!("\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"));
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    m.push_str(&format!("X-Levee-Queue-ID: {}\r\n", meta.id));
    m.push_str(&format!("Arrival-Date: {}\r\n", crate::headers::rfc5322_date(meta.received_at)));
    for (rcpt, reply, host) in failed {
        let status = reply
            .enhanced
            .map(|e| e.to_string())
            .unwrap_or_else(|| format!("{}.0.0", reply.code / 100));
        // A status of class 4 here means "gave up after retrying": report it as failed (5).
        let status = match status.strip_prefix('4') {
            Some(rest) => format!("5{rest}"),
            None => status,
        };
        m.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"
        ));
        if !host.is_empty() {
            m.push_str(&format!("Remote-MTA: dns; {}\r\n", one_line(host)));
        }
        m.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", one_line(&reply.to_string())));
    }
    m.push_str(&format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"));
    let mut data = m.into_bytes();
    data.extend_from_slice(header_block(original));
    if !data.ends_with(b"\r\n") {
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let envelope = Envelope {
        mail_from: None,
        rcpt_to: vec![sender.clone()],
        helo: hostname.to_string(),
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        client_name: Some(hostname.to_string()),
        tls: false,
        body: Body::SevenBit,
        smtputf8: false,
        declared_size: None,
    };
    (envelope, data)
}

fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The header section of a message (up to the first empty line).
fn header_block(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &message[..i + 2],
        None => message,
    }
}
