//! The job's DNS server, answered entirely by the supervisor: allowed names get a synthetic
//! address from the job's pool, every other name NXDOMAIN. Nothing is ever forwarded, and no
//! name chosen inside the sandbox is looked up on the host here (real resolution happens only
//! when a connection to an allowed name is relayed).

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

use super::allow::{Egress, normalize};
use super::{NetEvent, Pool, Verdict};

/// Seconds a synthetic answer may be cached: short, the pool lives only as long as the job.
const TTL: u32 = 30;

/// Answers one query. `None` for something that is not a query (no reply at all).
pub fn answer(egress: &Egress, pool: &mut Pool, query: &[u8]) -> (Option<Vec<u8>>, NetEvent) {
    let mut ev = NetEvent::dns();
    let Ok(msg) = Message::from_vec(query) else {
        ev.reason = "not a DNS message".into();
        return (None, ev);
    };
    if msg.metadata.message_type != MessageType::Query {
        ev.reason = "not a query".into();
        return (None, ev);
    }
    let mut reply = Message::response(msg.metadata.id, msg.metadata.op_code);
    reply.metadata.recursion_desired = msg.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(msg.queries.iter().cloned());
    let code = match (msg.metadata.op_code, msg.queries.as_slice()) {
        (OpCode::Query, [q]) => {
            let raw = q.name().to_ascii();
            ev.name = raw.trim_end_matches('.').to_string();
            ev.qtype = Some(q.query_type().to_string());
            match normalize(&raw).filter(|n| egress.name_allowed(n)) {
                None => {
                    ev.reason = "not in network.allow".into();
                    ResponseCode::NXDomain
                }
                Some(name) => match q.query_type() {
                    RecordType::A => match pool.address_for(&name) {
                        Some(ip) => {
                            ev.verdict = Verdict::Allowed;
                            ev.synthetic = Some(ip.to_string());
                            reply.add_answer(Record::from_rdata(
                                q.name().clone(),
                                TTL,
                                RData::A(A(ip)),
                            ));
                            ResponseCode::NoError
                        }
                        None => {
                            ev.reason = "the job's address pool is exhausted".into();
                            ResponseCode::Refused
                        }
                    },
                    // An allowed name exists but has only an IPv4 (synthetic) address: an
                    // empty NOERROR makes clients use A.
                    _ => {
                        ev.verdict = Verdict::Allowed;
                        ev.reason = "no records of this type (IPv4 only)".into();
                        ResponseCode::NoError
                    }
                },
            }
        }
        _ => {
            ev.reason = "one standard query per message is answered".into();
            ResponseCode::Refused
        }
    };
    reply.metadata.response_code = code;
    (reply.to_vec().ok(), ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn is_pool_address(ip: Ipv4Addr) -> bool {
        let o = ip.octets();
        o[0] == 127 && o[1] == crate::net::POOL_SECOND_OCTET
    }
    use crate::net::allow::RawNetwork;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    fn query(name: &str, ty: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_str(name).unwrap(), ty));
        m.to_vec().unwrap()
    }

    fn egress() -> Egress {
        let raw: RawNetwork = toml::from_str("allow = [\"pypi.org\", \"*.crates.io\"]").unwrap();
        Egress::from_raw(raw).unwrap()
    }

    #[test]
    fn allowed_names_get_stable_pool_addresses_and_others_nothing() {
        let e = egress();
        let mut pool = Pool::new(4);
        let (r, ev) = answer(&e, &mut pool, &query("PyPI.org.", RecordType::A));
        let r = Message::from_vec(&r.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let RData::A(A(ip)) = r.answers[0].data else {
            panic!()
        };
        assert!(is_pool_address(ip));
        assert_eq!(ev.verdict, Verdict::Allowed);
        assert_eq!(pool.name_of(ip), Some("pypi.org"));
        let (r2, _) = answer(&e, &mut pool, &query("pypi.org.", RecordType::A));
        let r2 = Message::from_vec(&r2.unwrap()).unwrap();
        assert_eq!(
            r2.answers[0].data,
            RData::A(A(ip)),
            "same name, same address"
        );

        for bad in [
            "evilpypi.org.",
            "crates.io.",
            "aGVsbG8.tunnel.example.",
            "pypi.org.evil.com.",
        ] {
            let (r, ev) = answer(&e, &mut pool, &query(bad, RecordType::A));
            let r = Message::from_vec(&r.unwrap()).unwrap();
            assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{bad}");
            assert!(r.answers.is_empty());
            assert_eq!(ev.verdict, Verdict::Denied);
        }
        // TXT for a tunnel name: nothing; AAAA of an allowed name: empty NOERROR.
        let (r, _) = answer(&e, &mut pool, &query("x.tunnel.example.", RecordType::TXT));
        let r = Message::from_vec(&r.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let (r, _) = answer(&e, &mut pool, &query("pypi.org.", RecordType::AAAA));
        let r = Message::from_vec(&r.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn the_pool_is_bounded_so_wildcards_are_a_bounded_channel() {
        let e = egress();
        let mut pool = Pool::new(2);
        for (i, name) in ["a.crates.io.", "b.crates.io.", "c.crates.io."]
            .iter()
            .enumerate()
        {
            let (r, _) = answer(&e, &mut pool, &query(name, RecordType::A));
            let r = Message::from_vec(&r.unwrap()).unwrap();
            let want = if i < 2 {
                ResponseCode::NoError
            } else {
                ResponseCode::Refused
            };
            assert_eq!(r.metadata.response_code, want, "{name}");
        }
        assert_eq!(answer(&e, &mut pool, b"\x00garbage").0, None);
    }
}
