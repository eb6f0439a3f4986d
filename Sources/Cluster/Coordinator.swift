import Foundation
import Logging
import Data
import NN
import Tensors
import Training
import Runtime
import Wire
import ZeroMQ

/// The coordinator of a distributed cohort (`cohort coordinator`): the ZeroMQ side of a
/// ``CoordinatorCore``.
///
/// It binds a ROUTER socket for the peers (CURVE and ZAP when the configuration has keys) and a PUB
/// socket for the log stream, evaluates the teacher, and runs the core with a ``CoordinatorDriver`` in one
/// loop: socket input and timers become events; the core decides admission, the schedule, absences,
/// scoring and checkpoints (see ``CoordinatorCore``). Restarted with `resume`, it continues from its
/// newest state and from where the peers are. The protocol: `docs/protocol.md`.
public final class Coordinator {
    public let configuration: CohortConfiguration
    public let logger: Logger
    /// The resolved endpoints (a port of `*` replaced by the port bound).
    public let controlEndpoint: String
    public var streamEndpoint: String { publisher.endpoint }
    let publisher: StreamPublisher
    let context: ZMQContext
    let control: ProtocolSocket
    let zap: ZAPHandler?
    /// Logs CURVE handshakes on the control socket that fail before ZAP (a client without CURVE, a wrong server key).
    let handshakes: HandshakeMonitor?
    let keys: CohortKeys?
    let data: CohortData
    let teacher: TeacherRunner?
    let directory: CohortRunDirectory
    let host: String
    /// The Prometheus endpoint (`--metrics-port`) and the cohort's series on it.
    let metrics: (endpoint: MetricsEndpoint, series: CohortMetrics)?
    /// Steps the teacher's outputs are computed ahead (0: in line).
    let teacherAhead: Int

    /// Loads the data and the teacher, binds both endpoints and creates the run directory.
    /// - Parameters:
    ///   - keyPath: the coordinator's secret key file, required when the configuration has `security`.
    ///   - insecure: allow binding beyond loopback without keys.
    ///   - console: where the coordinator's own records are printed (info and above).
    ///   - metricsPort: serve the cohort's metrics for Prometheus on this port (0: any free one).
    ///   - teacherAhead: steps the teacher's outputs are computed ahead, on a thread of their own (0: in line).
    public init(configuration: CohortConfiguration, keyPath: String? = nil, insecure: Bool = false,
                console: any LogSink = ConsoleSink(), metricsPort: Int? = nil, teacherAhead: Int = 2) throws {
        self.configuration = configuration
        self.teacherAhead = teacherAhead
        let network = configuration.network
        if configuration.security == nil && !insecure {
            for endpoint in [network.coordinator, network.stream] where !Self.isLocal(endpoint) {
                throw CoordinatorError.insecureBind(endpoint: endpoint)
            }
        }
        if let security = configuration.security {
            guard let keyPath else { throw SecurityError(description: "the configuration has security keys: give the coordinator its secret key (--key)") }
            keys = try CohortKeys(settings: security, secretKeyPath: keyPath)
            guard keys!.coordinator == keys!.own.publicKey else {
                throw SecurityError(description: "\(keyPath) is not the coordinator's key (security.coordinator_key)")
            }
        } else {
            keys = nil
        }
        directory = try CohortRunDirectory(output: configuration.output)
        let context = try ZMQContext()
        self.context = context
        let host = ProcessInfo.processInfo.hostName
        // The stream's logger must exist before the ZAP handler, which logs denials to it.
        let publisher = try StreamPublisher(context: context, file: configuration.output + "/stream.jsonl")
        self.publisher = publisher
        var logger = Logger(label: "cohort.coordinator") { label in
            CohortLogHandler(label: label, rank: nil, host: host, level: .debug,
                             sink: FanOutSink([(console, .info), (publisher, .debug)]))
        }
        logger.logLevel = .debug
        self.logger = logger
        let keys = self.keys
        zap = try keys.map { try ZAPHandler(context: context, keys: $0, logger: logger) }
        try publisher.bind(network.stream, curveSecretKey: keys?.own.secretKey)
        let codec = WireCodec(digest: configuration.digest)
        let socket = try ZMQSocket(context, type: .router)
        try socket.setRouterMandatory(true)
        try socket.setLinger(milliseconds: 2000)
        try socket.setSendTimeout(milliseconds: Int(network.timeout * 1000))
        try socket.setMaximumMessageSize(bytes: Int64(codec.maximumBytes))
        try socket.setHeartbeat(intervalMilliseconds: Int(network.heartbeatInterval * 1000),
                                timeoutMilliseconds: Int(network.heartbeatTimeout * 1000))
        if let keys {
            try socket.makeCurveServer(secretKey: keys.own.secretKey)
            try socket.setZAPDomain(ZAPHandler.controlDomain)
            handshakes = try HandshakeMonitor(socket: socket, name: "control", logger: logger)
        } else {
            handshakes = nil
        }
        try socket.bind(network.coordinator)
        controlEndpoint = socket.lastEndpoint
        control = ProtocolSocket(socket, codec: codec, logger: logger, routed: true)
        self.host = host
        metrics = try metricsPort.map { port in
            let endpoint = try MetricsEndpoint(port: port)
            return (endpoint, CohortMetrics(registry: endpoint.registry))
        }
        if let endpoint = metrics?.endpoint {
            logger.info("serving metrics at http://\(host):\(endpoint.port)/metrics", metadata: ["port": "\(endpoint.port)"])
        }
        publisher.publish(.phase(PhaseChange(rank: nil, host: host, phase: .loading, detail: "data", time: Date().timeIntervalSince1970)))
        teacher = try configuration.teacher.map { try TeacherRunner(settings: $0, dataSet: configuration.data.dataSet) }
        data = try CohortData.loading(configuration: configuration) { logger.info(Logger.Message(stringLiteral: $0)) }
    }

    deinit { zap?.stop(); handshakes?.stop() }

    /// Whether `endpoint` is reachable from this host only (loopback or IPC).
    static func isLocal(_ endpoint: String) -> Bool {
        if endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") { return true }
        guard endpoint.hasPrefix("tcp://") else { return false }
        let host = endpoint.dropFirst("tcp://".count).split(separator: ":").dropLast().joined(separator: ":")
        return host.hasPrefix("127.") || host == "localhost" || host == "[::1]"
    }

    /// Writes the resolved endpoints to `path` (JSON `{"coordinator": ..., "stream": ...}`), atomically:
    /// how `cohort launch` learns where to point its peers.
    public func writeEndpoints(to path: String) throws {
        let text = "{\"coordinator\":\"\(controlEndpoint)\",\"stream\":\"\(streamEndpoint)\"}\n"
        try AtomicFile.write(Data(text.utf8), to: path)
    }

    /// Admits the peers, trains every epoch (with `resume`: from the newest cohort checkpoint and where
    /// the peers are), tells the peers to stop and writes `summary.json`. On failure the peers are told
    /// to stop with the reason, the stream ends with it, and it is thrown.
    public func run(resume: Bool = false) throws -> CohortSummary {
        defer { publisher.close() }
        let (saved, skipped) = resume ? CoordinatorState.readable(output: configuration.output) : ([], [])
        for s in skipped { logger.warning("passed over a cohort checkpoint", metadata: ["why": "\(s)"]) }
        // Before admitting anyone: a long evaluation must not happen while peers await heartbeat answers.
        var teacherTop1 = saved.last?.teacherTop1
        if teacherTop1 == nil, let teacher {
            let name = "the teacher (\(configuration.teacher!.model))"
            publisher.publish(.phase(PhaseChange(rank: nil, host: host, phase: .evaluating, detail: name, time: wallClock())))
            let progress = PhaseProgress("evaluating \(name) on the test set", total: data.testSet.count) { [logger] in
                logger.info(Logger.Message(stringLiteral: $0))
            }
            teacherTop1 = evaluate(teacher.model, on: data.testSet, batchSize: configuration.evaluationBatchSize, progress: progress).top1
            progress.finish(String(format: "test top-1 %.2f%%", 100 * teacherTop1!))
        }
        var core = CoordinatorCore(configuration: configuration, stepsPerEpoch: data.stepsPerEpoch, trainCount: data.trainSet.count,
                                   testLabels: data.testSet.labels, timing: ProtocolTiming(configuration.network), savedStates: saved,
                                   teacherTop1: teacherTop1, endpoint: controlEndpoint, host: host, transport: "zmq",
                                   sessionSeed: UInt64.random(in: 1...UInt64.max))
        core.resumeRequested = resume
        let driver = CoordinatorDriver(core: core, transport: control, data: data, teacher: teacher, directory: directory)
        driver.publish = { [publisher] in publisher.publish($0) }
        driver.log = { [logger, control] record in log(record, to: logger, warnings: control.warnings) }
        var lastProgress = Date.distantPast
        driver.progress = { [logger] line, _ in
            // A line every 10 s at most: the monitor shows every step.
            guard Date().timeIntervalSince(lastProgress) >= 10 else { return }
            lastProgress = Date()
            logger.info(Logger.Message(stringLiteral: line))
        }
        if let settings = configuration.teacher, teacherAhead > 0 {
            driver.teacherPipeline = TeacherPipeline(settings: settings, data: data, epochs: configuration.epochs, depth: teacherAhead)
        }
        defer { driver.teacherPipeline?.stop() }
        if let series = metrics?.series {
            driver.onStep = { series.recordStep(globalStep: $0, present: $1) }
            driver.onEvaluation = { series.recordEvaluation(ensembleTop1: $0) }
        }
        logger.info("listening", metadata: ["endpoint": "\(controlEndpoint)", "stream": "\(streamEndpoint)", "secure": "\(keys != nil)"])
        driver.handle(.start, now: wallClock())
        while !driver.isDone {
            if let signal = StopSignal.current {
                driver.handle(.stop(.signal(signal)), now: wallClock())
                break
            }
            try driver.waitAndHandle(longest: 0.25, clock: wallClock)
        }
        switch driver.outcome! {
        case .finished(let summary):
            return summary
        case .failed(.resume(let error)): throw error
        case .failed(let error): throw error
        case .stopped(_, let signal): throw CoordinatorError.stopped(signal: signal ?? 0)
        }
    }
}

/// Logs a core's record with `logger`; warnings about a sender are rate-limited per sender.
func log(_ record: CoreLog, to logger: Logger, warnings: RateLimitedWarnings) {
    let metadata = record.metadata.mapValues { Logger.MetadataValue.string($0) }
    let message = Logger.Message(stringLiteral: record.message)
    switch record.level {
    case .debug: logger.debug(message, metadata: metadata)
    case .info: logger.info(message, metadata: metadata)
    case .notice: logger.notice(message, metadata: metadata)
    case .warning:
        if let sender = record.sender { warnings.warn(logger, sender: sender, message, metadata: metadata) } else { logger.warning(message, metadata: metadata) }
    case .error: logger.error(message, metadata: metadata)
    }
}
