/// Why a data set could not be loaded. Every case says what was expected and how to get it.
public enum DataSetError: Error, CustomStringConvertible, Equatable {
    /// A file the data set needs is absent.
    case missingFile(path: String, dataSet: String, hint: String)
    /// A file exists but is not what the format says.
    case malformed(file: String, reason: String)
    /// An unknown data set name.
    case unknownDataSet(String)

    public var description: String {
        switch self {
        case .missingFile(let path, let dataSet, let hint):
            "\(dataSet): missing \(path). \(hint)"
        case .malformed(let file, let reason):
            "\(file) is not a valid data file: \(reason)"
        case .unknownDataSet(let name):
            "unknown data set \"\(name)\"; choose one of: \(DataSetKind.allCases.map(\.rawValue).joined(separator: ", "))"
        }
    }
}
