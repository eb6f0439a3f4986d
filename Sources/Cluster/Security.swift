import Foundation
import Logging
import Synchronization
import Runtime
import ZeroMQ

/// Why keys could not be used.
public struct SecurityError: Error, CustomStringConvertible {
    public let description: String
}

/// CURVE key files as `cohort keygen` writes them: `NAME.key` (the secret key, Z85, readable by the owner
/// only) and `NAME.pub` (the public key, Z85).
public enum KeyFile {
    /// Writes a fresh key pair as `directory/name.key` and `directory/name.pub`; refuses to overwrite.
    public static func generate(name: String, in directory: String) throws -> CurveKeyPair {
        let pair = try CurveKeyPair.generate()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let secret = directory + "/" + name + ".key", pub = directory + "/" + name + ".pub"
        for path in [secret, pub] where FileManager.default.fileExists(atPath: path) {
            throw SecurityError(description: "\(path) exists; remove it first to make a new key")
        }
        guard FileManager.default.createFile(atPath: secret, contents: Data((pair.secretKey + "\n").utf8),
                                             attributes: [.posixPermissions: 0o600]),
              FileManager.default.createFile(atPath: pub, contents: Data((pair.publicKey + "\n").utf8),
                                             attributes: [.posixPermissions: 0o644]) else {
            throw SecurityError(description: "cannot write \(secret) and \(pub)")
        }
        return pair
    }

    /// The Z85 key in `path` (40 characters; surrounding whitespace ignored).
    public static func readKey(_ path: String) throws -> String {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw SecurityError(description: "cannot read the key file \(path) (cohort keygen writes key files)")
        }
        let key = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard key.utf8.count == 40 else { throw SecurityError(description: "\(path) does not hold a 40-character Z85 CURVE key") }
        return key
    }

    /// The key pair whose secret key is in `path` (its public key derived from it).
    public static func readPair(_ path: String) throws -> CurveKeyPair {
        let secret = try readKey(path)
        return CurveKeyPair(publicKey: try CurveKeyPair.publicKey(forSecret: secret), secretKey: secret)
    }
}

/// The keys one process of a secured cohort works with.
public struct CohortKeys: Sendable {
    /// This process's own pair.
    public let own: CurveKeyPair
    /// The coordinator's public key.
    public let coordinator: String
    /// The admitted public keys: the peers' by rank, then the monitors'.
    public let peers: [String]
    public let monitors: [String]

    /// Reads the configuration's public keys and this process's secret key.
    public init(settings: CohortConfiguration.SecuritySettings, secretKeyPath: String) throws {
        own = try KeyFile.readPair(secretKeyPath)
        coordinator = try KeyFile.readKey(settings.coordinatorKey)
        peers = try settings.peerKeys.map(KeyFile.readKey)
        monitors = try settings.monitorKeys.map(KeyFile.readKey)
    }

    /// The ZAP user id of whoever holds `key` on `domain`, or `nil` when it is not admitted there.
    /// Peers are `peer-<rank>`; monitors `monitor-<index>`; on the stream, peers are admitted as readers too.
    func user(for key: String, domain: String) -> String? {
        if let rank = peers.firstIndex(of: key) { return "peer-\(rank)" }
        if domain == ZAPHandler.streamDomain, let index = monitors.firstIndex(of: key) { return "monitor-\(index)" }
        return nil
    }
}

/// Logs the CURVE handshakes that fail before the ZAP handler is asked — a client without CURVE, one
/// holding the wrong server key, a garbled handshake — with the remote address, from ZeroMQ's socket
/// monitor, rate-limited per address. (Denials of unknown keys are the ZAP handler's to log.)
public final class HandshakeMonitor: Sendable {
    private let flags = ThreadFlags()

    /// Starts watching `socket` (a CURVE server) on a thread of its own; `name` tells the sockets apart.
    public init(socket: ZMQSocket, name: String, logger: Logger) throws {
        let endpoint = "inproc://cohort-handshakes-\(name)"
        try socket.monitor(endpoint, events: SocketEvent.handshakeFailedNoDetail | SocketEvent.handshakeFailedProtocol)
        let pair = try ZMQSocket(socket.context, type: .pair)
        try pair.setLinger(milliseconds: 0)
        try pair.connect(endpoint)
        let box = SocketBox(pair)
        let thread = Thread { [flags] in
            defer { flags.finish() }
            guard let pair = box.take() else { return }
            let warnings = RateLimitedWarnings()
            while !flags.stopRequested {
                guard (try? pair.waitForMessage(milliseconds: 100)) == true else { continue }
                while let frames = try? pair.receive(dontWait: true), let event = SocketEvent(frames: frames) {
                    let problem = event.event == SocketEvent.handshakeFailedProtocol ? event.handshakeProblem : "no detail"
                    warnings.warn(logger, sender: event.address, "CURVE handshake failed: \(problem)",
                                  metadata: ["address": "\(event.address)", "socket": "\(name)"])
                }
            }
        }
        thread.name = "cohort-handshakes"
        thread.start()
    }

    public func stop() { flags.stopAndWait() }
}

/// The coordinator's ZAP handler (ZeroMQ's authentication protocol, RFC 27): for every CURVE connection
/// to a socket of the coordinator's context it admits the configured keys and denies everything else,
/// logging each denial with the remote address.
public final class ZAPHandler: Sendable {
    public static let controlDomain = "cohort"
    public static let streamDomain = "stream"
    private let flags = ThreadFlags()

    /// Binds `inproc://zeromq.zap.01` in `context` (before any CURVE server socket accepts) and serves it
    /// on a thread of its own.
    public init(context: ZMQContext, keys: CohortKeys, logger: Logger) throws {
        let socket = try ZMQSocket(context, type: .reply)
        try socket.setLinger(milliseconds: 0)
        try socket.bind("inproc://zeromq.zap.01")
        let box = SocketBox(socket)
        let thread = Thread { [flags] in
            defer { flags.finish() }
            guard let socket = box.take() else { return }
            while !flags.stopRequested {
                guard (try? socket.waitForMessage(milliseconds: 100)) == true,
                      let request = try? socket.receive(dontWait: true) else { continue }
                try? socket.send(ZAPHandler.answer(request, keys: keys, logger: logger))
            }
        }
        thread.name = "cohort-zap"
        thread.start()
    }

    /// The reply to one ZAP request: `[version, request id, status code, status text, user id, metadata]`.
    static func answer(_ request: [[UInt8]], keys: CohortKeys, logger: Logger) -> [[UInt8]] {
        func text(_ i: Int) -> String { i < request.count ? String(decoding: request[i], as: UTF8.self) : "" }
        let version = request.first ?? Array("1.0".utf8)
        let id = request.count > 1 ? request[1] : []
        let domain = text(2), address = text(3), mechanism = text(5)
        var user: String?
        if mechanism == "CURVE", request.count > 6, let key = CurveKeyPair.z85(request[6]) {
            user = keys.user(for: key, domain: domain)
            if user == nil {
                logger.warning("authentication failed: unknown key", metadata: ["address": "\(address)", "domain": "\(domain)",
                                                                                "key": "\(key.prefix(8))…"])
            }
        } else {
            logger.warning("authentication failed: not CURVE", metadata: ["address": "\(address)", "domain": "\(domain)",
                                                                           "mechanism": "\(mechanism)"])
        }
        guard let user else { return [version, id, Array("400".utf8), Array("unknown key".utf8), [], []] }
        return [version, id, Array("200".utf8), Array("OK".utf8), Array(user.utf8), []]
    }

    /// Stops the handler's thread and waits for it.
    public func stop() { flags.stopAndWait() }
}

/// Hands a socket to the one thread that will use it from then on.
final class SocketBox: Sendable {
    private let socket: Mutex<ZMQSocket?>
    init(_ s: sending ZMQSocket) { socket = Mutex(s) }
    func take() -> ZMQSocket? { socket.withLock { s in defer { s = nil }; return s } }
}

/// Stop request and completion of a background thread.
final class ThreadFlags: Sendable {
    private let stopping = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)

    var stopRequested: Bool { stopping.load(ordering: .relaxed) }
    func finish() { finished.store(true, ordering: .releasing) }

    /// Asks the thread to stop and waits until it has.
    func stopAndWait() {
        stopping.store(true, ordering: .relaxed)
        while !finished.load(ordering: .acquiring) { usleep(5_000) }
    }
}
