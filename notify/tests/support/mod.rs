//! Real peers on loopback for the delivery tests: an SMTP sink and an HTTP receiver.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A message as the sink received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub recipients: Vec<String>,
    /// Headers and body, CRLF line ends, dots unstuffed.
    pub data: String,
}

impl Mail {
    /// A header's value, unfolded (the first one of that name).
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.data.split_once("\r\n\r\n")?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(value) = value.as_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            } else if value.is_some() {
                break;
            } else if let Some((field, content)) = line.split_once(':')
                && field.eq_ignore_ascii_case(name)
            {
                value = Some(content.trim().to_owned());
            }
        }
        value
    }
}

/// Just enough of an SMTP server (RFC 5321) to receive and record messages; it answers every
/// recipient with `rcpt` (`250 OK` accepts; change it with [`SmtpSink::answer`]).
#[derive(Debug, Clone)]
pub struct SmtpSink {
    pub url: String,
    pub mails: Arc<Mutex<Vec<Mail>>>,
    rcpt: Arc<Mutex<&'static str>>,
}

impl SmtpSink {
    pub async fn start(rcpt: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let rcpt = Arc::new(Mutex::new(rcpt));
        let (recorded, answer) = (mails.clone(), rcpt.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, answer.clone(), recorded.clone()));
            }
        });
        Self {
            url: format!("smtp://{address}"),
            mails,
            rcpt,
        }
    }

    /// From now on, answers every recipient with `rcpt` (`451 …` refuses for now).
    pub fn answer(&self, rcpt: &'static str) {
        *self.rcpt.lock().expect("lock") = rcpt;
    }

    pub fn received(&self) -> Vec<Mail> {
        self.mails.lock().expect("lock").clone()
    }
}

fn address(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_default()
}

async fn session(
    stream: TcpStream,
    answer: Arc<Mutex<&'static str>>,
    mails: Arc<Mutex<Vec<Mail>>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut recipients = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command.to_ascii_uppercase();
        let reply = if verb.starts_with("EHLO") || verb.starts_with("HELO") {
            "250 sink.test"
        } else if verb.starts_with("MAIL FROM:") {
            recipients.clear();
            "250 OK"
        } else if verb.starts_with("RCPT TO:") {
            let rcpt = *answer.lock().expect("lock");
            if rcpt.starts_with('2') {
                recipients.push(address(&command));
            }
            rcpt
        } else if verb == "DATA" {
            write
                .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut data = String::new();
            loop {
                line.clear();
                if read.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            mails.lock().expect("lock").push(Mail {
                recipients: std::mem::take(&mut recipients),
                data,
            });
            "250 OK queued"
        } else if verb == "RSET" || verb == "NOOP" {
            "250 OK"
        } else if verb == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "502 command not implemented"
        };
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}

/// A delivery an HTTP receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP receiver on a free loopback port (`<url>/hook`) answering `status`.
pub async fn receiver(status: u16) -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let recorded = deliveries.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let recorded = recorded.clone();
            async move {
                recorded
                    .lock()
                    .expect("lock")
                    .push(Delivery { headers, body });
                axum::http::StatusCode::from_u16(status).expect("a status")
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hook"), deliveries)
}
