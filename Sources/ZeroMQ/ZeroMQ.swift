import Foundation
import CZMQ

/// The text of a NUL-terminated C character buffer.
func text(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// A failed libzmq call: the operation and libzmq's error number and message.
public struct ZeroMQError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let code: Int32

    /// The call would block (a receive or send timeout, or a non-blocking call with nothing to do).
    public var isTimeout: Bool { code == EAGAIN }
    public var description: String { "\(operation): \(String(cString: zmq_strerror(code)))" }

    static func last(_ operation: String) -> ZeroMQError { ZeroMQError(operation: operation, code: zmq_errno()) }
}

/// A ZeroMQ context: the I/O threads and the sockets' home.
///
/// `@unchecked Sendable` because libzmq contexts are thread-safe by contract (sockets are not, and are
/// not `Sendable`). The context is terminated when the last socket made from it and the context itself
/// are gone: sockets keep a reference to their context.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    /// - Parameter ioThreads: libzmq's I/O threads (1 is right for a handful of peers).
    public init(ioThreads: Int = 1) throws {
        guard let h = zmq_ctx_new() else { throw ZeroMQError.last("zmq_ctx_new") }
        handle = h
        zmq_ctx_set(h, ZMQ_IO_THREADS, Int32(ioThreads))
    }

    deinit {
        while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
    }

    /// The linked libzmq's version, e.g. "4.3.4".
    public static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return "\(major).\(minor).\(patch)"
    }
}

/// A CURVE key pair in Z85 text (40 characters each).
public struct CurveKeyPair: Sendable, Equatable {
    public let publicKey: String
    public let secretKey: String

    public init(publicKey: String, secretKey: String) { self.publicKey = publicKey; self.secretKey = secretKey }

    /// A fresh key pair (libzmq's `zmq_curve_keypair`).
    public static func generate() throws -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw ZeroMQError.last("zmq_curve_keypair") }
        return CurveKeyPair(publicKey: text(pub), secretKey: text(sec))
    }

    /// A 32-byte binary key (as a ZAP request carries it) in Z85 text.
    public static func z85(_ binary: [UInt8]) -> String? {
        guard binary.count == 32 else { return nil }
        var out = [CChar](repeating: 0, count: 41)
        guard zmq_z85_encode(&out, binary, 32) != nil else { return nil }
        return text(out)
    }

    /// The public key belonging to a Z85 secret key.
    public static func publicKey(forSecret secret: String) throws -> String {
        var pub = [CChar](repeating: 0, count: 41)
        guard secret.utf8.count == 40, zmq_curve_public(&pub, secret) == 0 else {
            throw ZeroMQError(operation: "zmq_curve_public (a secret key is 40 Z85 characters)", code: EINVAL)
        }
        return text(pub)
    }
}

/// Socket patterns used by Cohort.
public enum SocketType: Sendable {
    case pair, publisher, subscriber, request, reply, dealer, router, pull, push

    var raw: Int32 {
        switch self {
        case .pair: ZMQ_PAIR
        case .publisher: ZMQ_PUB
        case .subscriber: ZMQ_SUB
        case .request: ZMQ_REQ
        case .reply: ZMQ_REP
        case .dealer: ZMQ_DEALER
        case .router: ZMQ_ROUTER
        case .pull: ZMQ_PULL
        case .push: ZMQ_PUSH
        }
    }
}

/// A ZeroMQ socket. Not thread-safe: it stays on the thread that uses it. Closed when released (after
/// its linger period; Cohort sets linger to 0 by default so closing never blocks).
public final class ZMQSocket {
    public let context: ZMQContext
    let handle: UnsafeMutableRawPointer
    public let type: SocketType

    public init(_ context: ZMQContext, type: SocketType) throws {
        guard let h = zmq_socket(context.handle, type.raw) else { throw ZeroMQError.last("zmq_socket") }
        self.context = context
        self.type = type
        handle = h
        try setOption(ZMQ_LINGER, Int32(0))
    }

    deinit { zmq_close(handle) }

    /// Binds to `endpoint` (`tcp://127.0.0.1:5555`, `tcp://*:0`, `inproc://name`, `ipc:///path`).
    public func bind(_ endpoint: String) throws {
        guard zmq_bind(handle, endpoint) == 0 else { throw ZeroMQError.last("bind \(endpoint)") }
    }

    /// Connects to `endpoint`; the connection is made (and remade) in the background.
    public func connect(_ endpoint: String) throws {
        guard zmq_connect(handle, endpoint) == 0 else { throw ZeroMQError.last("connect \(endpoint)") }
    }

    /// Publishes this socket's events whose `ZMQ_EVENT_*` bits are in `events` on `endpoint` (an
    /// `inproc://` address), where a `.pair` socket reads them as ``SocketEvent``s.
    public func monitor(_ endpoint: String, events: Int32) throws {
        guard zmq_socket_monitor(handle, endpoint, events) == 0 else { throw ZeroMQError.last("monitor \(endpoint)") }
    }

    /// The endpoint the socket last bound to (with the port a wildcard bind chose).
    public var lastEndpoint: String {
        var buffer = [CChar](repeating: 0, count: 256)
        var size = buffer.count
        zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size)
        return text(buffer)
    }

    // MARK: Options

    public func setOption(_ option: Int32, _ value: Int32) throws {
        var v = value
        guard zmq_setsockopt(handle, option, &v, MemoryLayout<Int32>.size) == 0 else { throw ZeroMQError.last("setsockopt \(option)") }
    }

    public func setOption(_ option: Int32, _ value: Int64) throws {
        var v = value
        guard zmq_setsockopt(handle, option, &v, MemoryLayout<Int64>.size) == 0 else { throw ZeroMQError.last("setsockopt \(option)") }
    }

    public func setOption(_ option: Int32, _ bytes: [UInt8]) throws {
        guard bytes.withUnsafeBytes({ zmq_setsockopt(handle, option, $0.baseAddress, $0.count) }) == 0 else {
            throw ZeroMQError.last("setsockopt \(option)")
        }
    }

    /// Milliseconds a receive waits before failing with a timeout (-1: forever).
    public func setReceiveTimeout(milliseconds: Int) throws { try setOption(ZMQ_RCVTIMEO, Int32(milliseconds)) }
    /// Milliseconds a send waits before failing with a timeout (-1: forever).
    public func setSendTimeout(milliseconds: Int) throws { try setOption(ZMQ_SNDTIMEO, Int32(milliseconds)) }
    /// The largest message accepted; a peer that sends more is disconnected (`ZMQ_MAXMSGSIZE`).
    public func setMaximumMessageSize(bytes: Int64) throws { try setOption(ZMQ_MAXMSGSIZE, bytes) }
    /// How long unsent messages are kept after close (milliseconds; 0 drops them).
    public func setLinger(milliseconds: Int) throws { try setOption(ZMQ_LINGER, Int32(milliseconds)) }

    /// How many outgoing messages may queue per peer before sends block (or a PUB socket drops).
    public func setSendHighWaterMark(_ messages: Int) throws { try setOption(ZMQ_SNDHWM, Int32(messages)) }

    /// Sends ZeroMQ heartbeats (PING) every `interval` ms and drops a connection silent for `timeout` ms.
    public func setHeartbeat(intervalMilliseconds interval: Int, timeoutMilliseconds timeout: Int) throws {
        try setOption(ZMQ_HEARTBEAT_IVL, Int32(interval))
        try setOption(ZMQ_HEARTBEAT_TIMEOUT, Int32(timeout))
    }
    /// The identity a ROUTER sees for this socket.
    public func setRoutingID(_ id: [UInt8]) throws { try setOption(ZMQ_ROUTING_ID, id) }
    /// Subscribes a SUB socket to messages starting with `prefix` (empty: everything).
    public func subscribe(_ prefix: [UInt8] = []) throws { try setOption(ZMQ_SUBSCRIBE, prefix) }
    /// A ROUTER fails a send to an unknown peer instead of dropping it silently.
    public func setRouterMandatory(_ on: Bool) throws { try setOption(ZMQ_ROUTER_MANDATORY, Int32(on ? 1 : 0)) }

    /// Makes this socket a CURVE server with `secretKey` (Z85): every connection is encrypted and
    /// clients must present a key (checked by a ZAP handler when one runs).
    public func makeCurveServer(secretKey: String) throws {
        try setOption(ZMQ_CURVE_SERVER, Int32(1))
        try setOption(ZMQ_CURVE_SECRETKEY, Array(secretKey.utf8) + [0])
    }

    /// Makes this socket a CURVE client of a server whose public key is `serverKey`.
    public func makeCurveClient(serverKey: String, keys: CurveKeyPair) throws {
        try setOption(ZMQ_CURVE_SERVERKEY, Array(serverKey.utf8) + [0])
        try setOption(ZMQ_CURVE_PUBLICKEY, Array(keys.publicKey.utf8) + [0])
        try setOption(ZMQ_CURVE_SECRETKEY, Array(keys.secretKey.utf8) + [0])
    }

    /// The ZAP domain this socket's connections are authenticated in.
    public func setZAPDomain(_ domain: String) throws { try setOption(ZMQ_ZAP_DOMAIN, Array(domain.utf8)) }

    // MARK: Messages

    /// Sends one multipart message; each frame is copied once into libzmq's message.
    /// - Throws: ``ZeroMQError`` (``ZeroMQError/isTimeout`` when the send timed out or would block).
    public func send(_ frames: [[UInt8]], dontWait: Bool = false) throws {
        try send(count: frames.count, dontWait: dontWait) { i, body in frames[i].withUnsafeBytes(body) }
    }

    /// Sends one multipart message from raw buffers (tensor data goes out without an intermediate array).
    public func send(_ frames: [UnsafeRawBufferPointer], dontWait: Bool = false) throws {
        try send(count: frames.count, dontWait: dontWait) { i, body in body(frames[i]) }
    }

    /// Sends one multipart message of `count` frames, asking `frame(i, send)` for each: it must call
    /// `send` with frame `i`'s bytes (valid only during that call) and return its result. This lets a
    /// caller hand over the storage of arrays of any element type without copying them into byte arrays.
    public func send(count: Int, dontWait: Bool = false, _ frame: (Int, (UnsafeRawBufferPointer) -> Int32) -> Int32) throws {
        precondition(count > 0, "a message has at least one frame")
        for i in 0..<count {
            var flags: Int32 = dontWait ? ZMQ_DONTWAIT : 0
            if i < count - 1 { flags |= ZMQ_SNDMORE }
            let result = frame(i) { buffer in zmq_send(handle, buffer.baseAddress, buffer.count, flags) }
            guard result >= 0 else { throw ZeroMQError.last("send") }
        }
    }

    /// Receives one whole multipart message.
    /// - Returns: the frames, or `nil` when the receive timed out (or would block with `dontWait`).
    public func receive(dontWait: Bool = false) throws -> [[UInt8]]? {
        try receiveWithSender(dontWait: dontWait)?.frames
    }

    /// Receives one whole multipart message with the user id the ZAP handler gave its connection (with
    /// CURVE: who holds the client key), `nil` on connections that were not authenticated.
    public func receiveWithSender(dontWait: Bool = false) throws -> (frames: [[UInt8]], userID: String?)? {
        var frames: [[UInt8]] = []
        var userID: String?
        var message = zmq_msg_t()
        zmq_msg_init(&message)
        defer { zmq_msg_close(&message) }
        repeat {
            let n = zmq_msg_recv(&message, handle, dontWait ? ZMQ_DONTWAIT : 0)
            if n < 0 {
                let error = ZeroMQError.last("receive")
                // A timeout can only happen before the first frame: the rest of a message arrives with it.
                if error.isTimeout && frames.isEmpty { return nil }
                throw error
            }
            let data = zmq_msg_data(&message)
            if userID == nil, let property = zmq_msg_gets(&message, "User-Id") { userID = String(cString: property) }
            frames.append(n == 0 ? [] : Array(UnsafeRawBufferPointer(start: data, count: Int(n))))
        } while zmq_msg_more(&message) == 1
        return (frames, userID)
    }

    /// Whether a message can be received within `milliseconds` (-1: wait forever).
    public func waitForMessage(milliseconds: Int) throws -> Bool {
        try ZMQSocket.poll([self], milliseconds: milliseconds)[0]
    }

    /// Waits until any of `sockets` has a message to receive, or `milliseconds` pass (-1: forever).
    /// - Returns: for each socket, whether it is readable.
    public static func poll(_ sockets: [ZMQSocket], milliseconds: Int) throws -> [Bool] {
        var items = sockets.map { zmq_pollitem_t(socket: $0.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
        while true {
            let n = zmq_poll(&items, Int32(items.count), milliseconds)
            if n >= 0 { break }
            if zmq_errno() == EINTR { continue }
            throw ZeroMQError.last("poll")
        }
        return items.map { $0.revents & Int16(ZMQ_POLLIN) != 0 }
    }
}

/// One event from a socket monitor (``ZMQSocket/monitor(_:events:)``): its `ZMQ_EVENT_*` code, its value
/// (for handshake failures, a `ZMQ_PROTOCOL_ERROR_*` code) and the connection's remote address.
public struct SocketEvent: Sendable, Equatable {
    /// A handshake failed without more detail (`ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL`).
    public static let handshakeFailedNoDetail = Int32(ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    /// A handshake broke the protocol; `value` says how (`ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL`).
    public static let handshakeFailedProtocol = Int32(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)

    public let event: Int32
    public let value: UInt32
    public let address: String

    /// Parses a monitor message: a 6-byte frame (event as uint16, value as uint32, little-endian) and the address.
    public init?(frames: [[UInt8]]) {
        guard frames.count >= 2, frames[0].count >= 6 else { return nil }
        let f = frames[0]
        event = Int32(UInt16(f[0]) | UInt16(f[1]) << 8)
        value = UInt32(f[2]) | UInt32(f[3]) << 8 | UInt32(f[4]) << 16 | UInt32(f[5]) << 24
        address = String(decoding: frames[1], as: UTF8.self)
    }

    /// What a failed handshake's value says, in words.
    public var handshakeProblem: String {
        switch Int32(bitPattern: value) {
        case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "the client does not speak CURVE (security mechanism mismatch)"
        case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "the handshake does not decrypt (a wrong server key?)"
        default: String(format: "protocol error 0x%08x", value)
        }
    }
}
