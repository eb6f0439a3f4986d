import Foundation
import Logging
import Synchronization
import Data
import NN
import Training
import Runtime
import Wire
import ZeroMQ

/// One peer process of a distributed cohort (`cohort peer`): the ZeroMQ side of a ``PeerCore``.
///
/// Its ``PeerCompute`` trains the network on the batches every member derives from the shared seed and
/// writes `OUTPUT/peer-<rank>/` (metrics, checkpoints) like the in-process cohort; it runs on a worker
/// thread while one loop turns socket input, timers (hello, heartbeat, liveness) and the work's results
/// into the core's events, so the peer answers the coordinator while it computes.
///
/// It survives the coordinator: when the coordinator stops answering heartbeats, the peer drops the step
/// in flight and rejoins — with the coordinator back, or a restarted one — keeping its state. Started
/// with `resume`, it loads its newest valid checkpoint and rejoins at the cohort's next step.
public final class PeerNode {
    public let rank: Int
    public let configuration: CohortConfiguration
    public let logger: Logger
    let coordinatorEndpoint: String
    let logs: BufferedSink
    let host: String
    let keys: CohortKeys?
    let codec: WireCodec
    let stepsDone: Int
    let sampler: any BatchSampler
    let teacherFeatureCount: Int?
    private let context: ZMQContext
    private let work: ThreadedPeerWork
    /// Mesh mode: the data plane, and the ZAP handler admitting the cohort's peers to it (with security).
    private let mesh: MeshLink?
    private let zap: ZAPHandler?
    /// The Prometheus endpoint (`--metrics-port`).
    private let metricsEndpoint: MetricsEndpoint?

    /// Loads the data, builds the network (from its newest checkpoint with `resume`) and prepares the
    /// connection to `coordinator`.
    /// - Parameters:
    ///   - keyPath: this peer's secret key file, required when the configuration has `security`.
    ///   - console: where this peer's records are printed (info and above); every record at info and
    ///     above also goes to the coordinator's log stream.
    ///   - metricsPort: serve this peer's step metrics for Prometheus on this port (0: any free one).
    ///   - meshBind: mesh mode: where to bind the data socket the other peers send their outputs to
    ///     (default: a free port, on loopback when the coordinator is on this host).
    public init(configuration: CohortConfiguration, rank: Int, coordinator: String, resume: Bool = false, keyPath: String? = nil,
                console: any LogSink = ConsoleSink(), metricsPort: Int? = nil, meshBind: String? = nil) throws {
        precondition(configuration.peers.indices.contains(rank), "rank \(rank) is checked by the caller")
        self.rank = rank
        self.configuration = configuration
        coordinatorEndpoint = coordinator
        let host = ProcessInfo.processInfo.hostName
        self.host = host
        let logs = BufferedSink()
        self.logs = logs
        let logger = Logger(label: "cohort.peer") { label in
            CohortLogHandler(label: label, rank: rank, host: host, level: .info, sink: FanOutSink([(console, .info), (logs, .info)]))
        }
        self.logger = logger
        if let security = configuration.security {
            guard let keyPath else { throw SecurityError(description: "the configuration has security keys: give this peer its secret key (--key)") }
            keys = try CohortKeys(settings: security, secretKeyPath: keyPath)
            guard keys!.peers[rank] == keys!.own.publicKey else {
                throw SecurityError(description: "\(keyPath) is not the key of peer \(rank) (security.peer_keys[\(rank)])")
            }
        } else {
            keys = nil
        }
        let data = try CohortData.loading(configuration: configuration) { logger.info(Logger.Message(stringLiteral: $0)) }
        sampler = data.sampler
        let kind = configuration.data.dataSet
        teacherFeatureCount = configuration.teacher.map {
            Architecture(name: $0.model)!.make(inputChannels: kind.channels, classCount: kind.classCount, seed: 0).featureCount
        }
        codec = WireCodec(digest: configuration.digest)
        let context = try ZMQContext()
        self.context = context
        if configuration.network.exchange == .mesh {
            let keys = self.keys, codec = self.codec
            zap = try keys.map { try ZAPHandler(context: context, keys: $0, logger: logger) }
            let link = try MeshLink(context: context, bind: meshBind ?? MeshLink.defaultBind(coordinator: coordinator), host: host, keys: keys,
                                    codec: codec, logger: logger)
            mesh = link
            logger.info("receiving the others' outputs at \(link.endpoint)", metadata: ["data_endpoint": "\(link.endpoint)"])
        } else {
            zap = nil
            mesh = nil
        }
        let warnings = RateLimitedWarnings()
        let compute = try PeerCompute(configuration: configuration, rank: rank, data: data, teacherFeatureCount: teacherFeatureCount, host: host,
                                      log: { log($0, to: logger, warnings: warnings) })
        if let metricsPort {
            let endpoint = try MetricsEndpoint(port: metricsPort)
            let series = PeerMetrics(registry: endpoint.registry, rank: rank, model: configuration.peers[rank].model)
            compute.onStep = { series.recordStep($0, terms: $1, batchSize: $2) }
            compute.onEvaluation = { series.recordEvaluation(top1: $0) }
            metricsEndpoint = endpoint
            logger.info("serving metrics at http://\(host):\(endpoint.port)/metrics", metadata: ["port": "\(endpoint.port)"])
        } else {
            metricsEndpoint = nil
        }
        if resume { try compute.restore() }
        stepsDone = compute.done
        work = ThreadedPeerWork(compute)
    }

    deinit { work.stop(); zap?.stop() }

    private func connect() throws -> PeerSockets {
        let dealer = try ZMQSocket(context, type: .dealer)
        try dealer.setLinger(milliseconds: 2000)
        try dealer.setSendTimeout(milliseconds: Int(configuration.network.timeout * 1000))
        try dealer.setMaximumMessageSize(bytes: Int64(codec.maximumBytes))
        if let keys { try dealer.makeCurveClient(serverKey: keys.coordinator, keys: keys.own) }
        try dealer.connect(coordinatorEndpoint)
        return PeerSockets(control: ProtocolSocket(dealer, codec: codec, logger: logger, routed: false), mesh: mesh)
    }

    /// Joins the cohort and trains until the coordinator says the run is finished.
    /// - Throws: ``PeerError`` when refused, out of step, stopped or left without a coordinator.
    public func run() throws {
        let core = PeerCore(configuration: configuration, rank: rank, sampler: sampler, teacherFeatureCount: teacherFeatureCount,
                            timing: ProtocolTiming(configuration.network), done: stepsDone, host: host, endpoint: coordinatorEndpoint,
                            dataEndpoint: mesh?.endpoint)
        let driver = PeerDriver(core: core, transport: try connect(), work: work)
        let warnings = RateLimitedWarnings()
        driver.log = { [logger] in log($0, to: logger, warnings: warnings) }
        driver.reconnect = { [unowned self] in try connect() }
        driver.logBatch = { [logs, rank, host] status, phase in
            let (records, dropped) = logs.drain()
            var all = records
            if dropped > 0 {
                all.insert(LogRecord(time: wallClock(), level: "warning", rank: rank, host: host, label: "cohort.peer",
                                     message: "\(dropped) log record(s) dropped (buffer full)"), at: 0)
            }
            guard !all.isEmpty || status != nil || phase != nil else { return nil }
            return Message.LogBatch(records: all, status: status, phase: phase)
        }
        try driver.handle(.start, now: wallClock())
        var lastFlush = Date()
        while !driver.isDone {
            if let signal = StopSignal.current {
                try driver.handle(.stop(signal: signal), now: wallClock())
                break
            }
            try driver.waitAndHandle(idle: 0.25, busy: 0.005, clock: wallClock)
            // Records logged while work runs (an evaluation's progress) reach the stream as they come.
            if work.isBusy, Date().timeIntervalSince(lastFlush) >= 1, let batch = driver.logBatch(nil, nil) {
                lastFlush = Date()
                try? driver.transport.send(.log(batch), to: nil)
            }
        }
        switch driver.outcome! {
        case .finished: return
        case .failed(let error): throw error
        }
    }
}

/// Runs a peer's work on a thread of its own, one item at a time, so that the peer's loop keeps
/// answering (heartbeats, liveness) while the network computes. The ``PeerCompute`` lives behind a
/// mutex that only the worker takes while work runs.
final class ThreadedPeerWork: PeerWorkRunner, Sendable {
    private struct Queue {
        var work: PeerWork?
        var result: PeerWorkResult?
        var busy = false
        var stopping = false
    }
    private let compute: Mutex<PeerCompute>
    private let queue = Mutex(Queue())
    private let wake = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)

    init(_ compute: consuming sending PeerCompute) {
        self.compute = Mutex(compute)
        let thread = Thread { [self] in loop() }
        thread.name = "cohort-peer-work"
        thread.start()
    }

    private func loop() {
        defer { finished.signal() }
        while true {
            wake.wait()
            guard let work = queue.withLock({ q -> PeerWork? in
                if q.stopping { return nil }
                defer { q.work = nil }
                return q.work
            }) else { return }
            let result = compute.withLock { $0.perform(work) }
            queue.withLock { $0.result = result; $0.busy = false }
        }
    }

    func submit(_ work: PeerWork) {
        queue.withLock { q in
            precondition(!q.busy && q.work == nil, "one piece of work at a time")
            q.work = work
            q.busy = true
        }
        wake.signal()
    }

    func takeResult() -> PeerWorkResult? {
        queue.withLock { q in
            defer { q.result = nil }
            return q.result
        }
    }

    var isBusy: Bool { queue.withLock { $0.busy } }

    /// Stops the thread after the work under way.
    func stop() {
        queue.withLock { $0.stopping = true }
        wake.signal()
        finished.wait()
    }
}
