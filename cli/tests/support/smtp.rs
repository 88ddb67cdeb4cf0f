//! Just enough of an SMTP server (RFC 5321) on loopback to receive and record messages, for
//! tests that follow an email's link (the pattern of `notify/tests/support`, on plain threads).
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

/// A message as the sink received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub recipients: Vec<String>,
    /// Headers and body, CRLF line ends, dots unstuffed.
    pub data: String,
}

/// A running sink: every recipient is accepted, every message kept.
#[derive(Debug, Clone)]
pub struct SmtpSink {
    /// `smtp://127.0.0.1:<port>`.
    pub url: String,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpSink {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let recorded = mails.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let recorded = recorded.clone();
                std::thread::spawn(move || session(stream, &recorded));
            }
        });
        Self {
            url: format!("smtp://{address}"),
            mails,
        }
    }

    pub fn received(&self) -> Vec<Mail> {
        self.mails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn address(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_default()
}

fn session(stream: TcpStream, mails: &Mutex<Vec<Mail>>) -> std::io::Result<()> {
    let mut write = stream.try_clone()?;
    let mut read = BufReader::new(stream);
    write.write_all(b"220 sink.test ESMTP\r\n")?;
    let mut recipients = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line)? == 0 {
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
            recipients.push(address(&command));
            "250 OK"
        } else if verb == "DATA" {
            write.write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")?;
            let mut data = String::new();
            loop {
                line.clear();
                if read.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            mails
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Mail {
                    recipients: std::mem::take(&mut recipients),
                    data,
                });
            "250 OK queued"
        } else if verb == "RSET" || verb == "NOOP" {
            "250 OK"
        } else if verb == "QUIT" {
            write.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            "502 command not implemented"
        };
        write.write_all(format!("{reply}\r\n").as_bytes())?;
    }
}
