import Testing
@testable import TOML

@Suite struct TOMLParserTests {
    @Test func parsesScalarsTablesAndLines() throws {
        let doc = try TOML.parse("""
        # comment
        title = "Loupe"   # trailing
        count = 1_000
        hex = 0xFF
        ratio = 0.5
        on = true
        when = 2026-11-23T10:00:00Z

        [root]
        key = 'ec-p256'
        [root.subject]
        O = "Loupe"
        CN = "Root {id}"
        """)
        #expect(doc["title"]?.string == "Loupe")
        #expect(doc["title"]?.line == 2)
        #expect(doc["count"]?.integer == 1000)
        #expect(doc["hex"]?.integer == 255)
        #expect(doc["ratio"]?.kind == .float(0.5))
        #expect(doc["on"]?.bool == true)
        #expect(doc["when"]?.kind == .datetime("2026-11-23T10:00:00Z"))
        let root = try #require(doc["root"]?.table)
        #expect(root.line == 9)
        #expect(root["key"]?.string == "ec-p256")
        let subject = try #require(root["subject"]?.table)
        #expect(subject.keys == ["O", "CN"])  // order is kept
        #expect(subject["CN"]?.line == 13)
    }

    @Test func arraysInlineTablesAndArraysOfTables() throws {
        let doc = try TOML.parse("""
        ports = [
          443,   # https
          8443,
        ]
        list = { file = "ads.txt", n = [1, 2] }
        [[rule]]
        name = "a"
        [[rule]]
        name = "b"
        match.dst_port = [53]
        """)
        #expect(doc["ports"]?.array?.map(\.integer) == [443, 8443])
        #expect(doc["list"]?.table?["file"]?.string == "ads.txt")
        let rules = try #require(doc["rule"]?.array)
        #expect(rules.count == 2)
        #expect(rules[0].line == 6 && rules[1].line == 8)
        #expect(rules[1].table?["match"]?.table?["dst_port"]?.array?.first?.integer == 53)
    }

    @Test func strings() throws {
        let doc = try TOML.parse(#"""
        a = "tab\there \u00e9 \"q\""
        b = 'C:\path'
        c = """
        line one
        line two \
           joined"""
        d = '''
        raw \n'''
        "quoted key" = 1
        """#)
        #expect(doc["a"]?.string == "tab\there é \"q\"")
        #expect(doc["b"]?.string == #"C:\path"#)
        #expect(doc["c"]?.string == "line one\nline two joined")
        #expect(doc["d"]?.string == #"raw \n"#)
        #expect(doc["quoted key"]?.integer == 1)
    }

    @Test(arguments: [
        ("a = 1\na = 2", 2, "defined more than once"),
        ("[t]\n[t]", 2, "defined more than once"),
        ("a = hello", 1, "strings need quotes"),
        ("a = \"open", 1, "unterminated string"),
        ("a = [1, 2", 1, "unterminated array"),
        ("a = 1 b = 2", 1, "end of the line"),
        ("= 1", 1, "expected a key"),
        ("a = 01", 1, "invalid value"),
        ("a = {x = 1}\n[a]", 2, "defined more than once"),
        ("a = \"\\q\"", 1, "invalid escape"),
        ("\n\nx = [1,\n 2,\n oops]", 5, "invalid value"),
    ])
    func errorsNameTheLine(input: String, line: Int, message: String) {
        do {
            _ = try TOML.parse(input)
            Issue.record("expected an error for \(input)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.message.contains(message), "\(error)")
        }
    }

    @Test func readerRejectsUnknownKeysAndWrongTypes() throws {
        let reader = try TOMLReader.parse("name = \"x\"\ncount = \"3\"\ntypo = 1\n", file: "f.toml")
        #expect(throws: ConfigError(file: "f.toml", line: 3, message: "unknown key 'typo' (allowed here: count, name)")) {
            try reader.onlyKeys(["name", "count"])
        }
        do {
            _ = try reader.integer("count")
            Issue.record("a string must not read as an integer")
        } catch {
            #expect(error.description == "f.toml:2: 'count' must be an integer, found a string")
        }
        #expect(try reader.string("name") == "x")
        #expect(try reader.string("absent") == nil)
    }

    @Test func syntaxErrorsCarryTheFile() {
        #expect(throws: ConfigError(file: "p.toml", line: 1, message: "invalid value 'nope' (strings need quotes)")) {
            try TOMLReader.parse("a = nope", file: "p.toml")
        }
    }
}
