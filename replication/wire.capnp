@0xfc4bb1ba8dc6ac74;
# The ctsync sync protocol on the wire. One UDP datagram = one Datagram message, written with
# Cap'n Proto's packed encoding (capnp::writePackedMessage). The plain C++ records the rest of
# the code uses are in records.hpp; codec.cpp maps between the two.
#
# Evolution rules (read these before touching the file):
#  - Fields, union arms and structs are only ever APPENDED, with the next free ordinal. Never
#    renumber, retype, reorder or remove anything; a field no longer used stays, documented as
#    obsolete. Cap'n Proto then lets any reader read any writer's messages: unknown fields are
#    ignored, missing fields read as their default (zero).
#  - Datagram.protocolVersion = major << 8 | minor. The minor number is bumped by an appended
#    field or record kind a reader may need to know about; the major number only by a change old
#    readers cannot decode at all (there has been none). A reader rejects another major number
#    (kUnknownVersion) and, in a datagram of a newer minor, skips records of kinds or address
#    families it does not know; in a datagram of its own or an older minor, such a record is an
#    error (kBadRecord).
#  - Keep the common case small: every field is laid out so that the values of an ordinary IPv4
#    TCP flow fill few words and the rest stays zero, which the packed encoding makes nearly
#    free. Measure (tests/replication/codec_test.cpp prints bytes per upsert) before and after.
#
# Minor versions (major 0 throughout):
#   1  the first protocol
#   2  bulkBegin.startHlc, the `covered` record
#   3  flow.extra (NAT sequence adjustment, SCTP and DCCP state); the `expect` and
#      `expectDelete` records. A (minor 3) part in a datagram of minor 1 or 2 is kBadRecord:
#      no writer of those minors can have sent it.
#
# Conventions: IPv4 addresses are UInt32 in host order (10.0.0.1 = 0x0a000001); an IPv6 address
# is two UInt64, hi = bytes 0..7 and lo = bytes 8..15 read big-endian. The reply tuple of a flow
# is not sent; instead, each of its fields is sent XORed with the same field of the inverted
# original tuple (table::invertTuple, or a plain swap of addresses and ports when the original
# has no inverse). Without NAT every XOR is zero and costs nothing after packing; SNAT or DNAT
# costs only the address and port that changed.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ctsync::replication::wire");

struct Datagram {
  protocolVersion @0 :UInt16;  # major << 8 | minor; 3 today (see the history below)
  node @1 :UInt16;             # sender
  clusterId @2 :UInt32;
  bootEpoch @3 :UInt64;        # new on every start of the sender
  seq @4 :UInt64;              # per sender and epoch, from 1
  hlcBase @5 :UInt64;          # records carry version.hlc as a delta to this ...
  records @6 :List(Record);    # in the order they were added; order matters (upsert, delete)
  nodeBase @7 :UInt16;         # ... and version.node XORed with this
}

struct Record {
  union {
    # A flow upsert (records.hpp FlowRecord). The ordinals are chosen so that Cap'n Proto lays
    # the fields of an ordinary IPv4 TCP flow out like this (capnp compile -ocapnp shows it):
    #   word 0  src4 dst4                                   8 bytes, dense
    #   word 1  sport dport timeoutSec                      7-8 bytes, dense
    #   word 2  hlcDelta                                    3-6 bytes
    #   word 3  status l4 tcpState tcpFlags*                6 bytes
    #   word 4  replySrcXor4 replyDstXor4                   zero without NAT, 4 bytes with
    #   word 5  replySportXor replyDportXor tcpScale* node  2-5 bytes
    #   words 6.. and the pointers: rarely set, zero, so one zero run of two bytes
    # Dense words next to each other pack as one raw run (no tag per word).
    flow :group {
      src4 @0 :UInt32;           # family ipv4: the original tuple's addresses
      dst4 @1 :UInt32;
      sport @2 :UInt16;          # original tuple's ports (ICMP: id, type << 8 | code)
      dport @3 :UInt16;
      timeoutSec @4 :UInt32;     # remaining lifetime when the record was written
      hlcDelta @5 :UInt64;       # zigzag(version.hlc - Datagram.hlcBase), wrapping
      status @6 :UInt32;         # table::status bits
      l4 @7 :UInt8;              # IP protocol of both tuples
      tcpState @8 :UInt8;        # table::TcpState; 0 for other protocols
      tcpFlagsOrig @9 :UInt8;    # table::tcpflag bits, per direction
      tcpFlagsReply @10 :UInt8;
      replySrcXor4 @11 :UInt32;  # reply tuple XOR inverted original (see the top of the file)
      replyDstXor4 @12 :UInt32;
      replySportXor @13 :UInt16;
      replyDportXor @14 :UInt16;
      tcpScaleOrig @15 :UInt8;   # TCP window scale, per direction
      tcpScaleReply @16 :UInt8;
      versionNodeXor @17 :UInt16;  # version.node XOR Datagram.nodeBase
      family @18 :Family;        # ipv6: addresses in v6, the *4 fields stay zero
      zone @19 :UInt16;
      helper @20 :UInt8;         # 0 none, 1 ftp, 2 tftp
      mark @21 :UInt32;
      generation @22 :UInt32;
      labels @23 :Labels;        # null when all zero
      master @24 :Tuple;         # null when the flow has no master
      v6 @25 :Addrs6;            # family ipv6 only
      replyFull @26 :Tuple;      # the whole reply tuple, only when its address family or protocol
                                 # differs from the original's (never in conntrack; keeps the
                                 # codec lossless); the reply XOR fields are then zero
      # (minor 3) What only some flows have: null when every field of it is zero, so an
      # ordinary flow pays one zero pointer word, which joins the zero run of the words above.
      extra @55 :FlowExtra;
    }

    # A flow delete (records.hpp FlowDelete): the original tuple, its zone and a version.
    delete :group {
      src4 @27 :UInt32;
      dst4 @28 :UInt32;
      sport @29 :UInt16;
      dport @30 :UInt16;
      l4 @31 :UInt8;
      family @32 :Family;
      zone @33 :UInt16;
      hlcDelta @34 :UInt64;
      versionNodeXor @35 :UInt16;
      generation @36 :UInt32;
      v6 @37 :Addrs6;            # family ipv6 only; the reply XOR fields stay zero
    }

    ack :group {
      sender @38 :UInt16;
      epoch @39 :UInt64;
      cumulative @40 :UInt64;
    }

    nack :group {
      sender @41 :UInt16;
      epoch @42 :UInt64;
      missing @43 :List(SeqRange);
    }

    alive :group {
      lastSeq @44 :UInt64;
    }

    resyncRequest :group {
      sender @45 :UInt16;
    }

    bulkBegin :group {
      bulkId @46 :UInt32;
      # (minor 2) The sender's hybrid logical clock when the bulk's snapshot was taken. A sweep
      # removes only flows written before it: later ones may just have arrived before the bulk
      # opened at the receiver.
      startHlc @54 :UInt64;
    }

    bulkEnd :group {
      bulkId @47 :UInt32;
      flows @48 :UInt64;
    }

    digest :group {
      rangeFirst @49 :UInt32;
      rangeLast @50 :UInt32;
      hash @51 :UInt64;
      flows @52 :UInt32;
    }

    # Sender -> all, in a sequenced datagram (minor 2): my datagrams in these ranges were
    # answered by resending the current state of what they carried in datagrams sent since (or
    # carried nothing that still needs sending): count them as received.
    covered :group {
      ranges @53 :List(SeqRange);
    }

    # (minor 3) An expectation upsert (records.hpp ExpectRecord). Rare (helpers make them), so
    # the tuples are whole Tuple structs, in the pointer slots the flow's parts use.
    expect :group {
      expected @56 :Tuple;       # key: the expected tuple, wildcard fields zero
      mask @57 :Tuple;           # same family and protocol as `expected`
      master @58 :Tuple;         # original tuple of the master flow, in the same zone
      natTuple @59 :Tuple;       # null without NAT (CTA_EXPECT_NAT_TUPLE)
      zone @60 :UInt16;
      timeoutSec @61 :UInt32;    # remaining lifetime when the record was written
      flags @62 :UInt32;         # expectflag bits
      cls @63 :UInt32;           # the helper's expectation class
      helper @64 :UInt8;         # table::helperCode()
      fn @65 :UInt8;             # table::expectFnCode()
      natDir @66 :UInt8;         # 0 original, 1 reply
      hlcDelta @67 :UInt64;      # as in `flow`
      versionNodeXor @68 :UInt16;
      generation @69 :UInt32;
    }

    # (minor 3) An expectation delete (records.hpp ExpectDelete).
    expectDelete :group {
      expected @70 :Tuple;
      zone @71 :UInt16;
      hlcDelta @72 :UInt64;
      versionNodeXor @73 :UInt16;
      generation @74 :UInt32;
    }
  }
}

# The rarer parts of a flow's state (minor 3; records.hpp FlowRecord).
struct FlowExtra {
  # NAT sequence adjustment per direction (the kernel's nf_ct_seqadj, CTA_SEQ_ADJ_ORIG/REPLY).
  seqAdjOrigPos @0 :UInt32;       # correction position
  seqAdjOrigBefore @1 :Int32;     # offset before it
  seqAdjOrigAfter @2 :Int32;      # offset after it
  seqAdjReplyPos @3 :UInt32;
  seqAdjReplyBefore @4 :Int32;
  seqAdjReplyAfter @5 :Int32;
  # SCTP (l4 132): enum sctp_conntrack, verification tags of the original and reply direction.
  sctpState @6 :UInt8;
  sctpVtagOrig @7 :UInt32;
  sctpVtagReply @8 :UInt32;
  # DCCP (l4 33): enum ct_dccp_states, role of the original direction's sender (0 client,
  # 1 server), handshake sequence number.
  dccpState @9 :UInt8;
  dccpRole @10 :UInt8;
  dccpHandshakeSeq @11 :UInt64;
}

# IPv6 addresses of a flow (or of a key, where the reply XORs stay zero).
struct Addrs6 {
  srcHi @0 :UInt64;
  srcLo @1 :UInt64;
  dstHi @2 :UInt64;
  dstLo @3 :UInt64;
  replySrcXorHi @4 :UInt64;
  replySrcXorLo @5 :UInt64;
  replyDstXorHi @6 :UInt64;
  replyDstXorLo @7 :UInt64;
}

# 128-bit conntrack labels: hi = label bits 0..63, lo = bits 64..127 (byte i of the label array
# is byte i % 8 of hi or lo, little-endian).
struct Labels {
  hi @0 :UInt64;
  lo @1 :UInt64;
}

# A whole tuple, for the rare places that need one (the master of a RELATED flow).
struct Tuple {
  family @0 :Family;
  src4 @1 :UInt32;
  dst4 @2 :UInt32;
  l4 @3 :UInt8;
  sport @4 :UInt16;
  dport @5 :UInt16;
  v6 @6 :Addrs6;                 # family ipv6 only; the reply XOR fields stay zero
}

struct SeqRange {
  first @0 :UInt64;
  last @1 :UInt64;
}

enum Family {
  ipv4 @0;
  ipv6 @1;
}
