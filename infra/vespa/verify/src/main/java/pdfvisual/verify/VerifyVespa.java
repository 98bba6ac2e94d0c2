package pdfvisual.verify;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.yahoo.document.Document;

import java.io.File;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Checks application packages, feed operations and rank expressions with Vespa's own Java code, in one JVM.
 *
 * <p>Usage: {@code VerifyVespa REQUEST.json RESULT.json}. The request:
 * <pre>
 * {"packages": {"app": "/path/to/package", ...},         every package is built; failures are reported
 *  "feed": {"package": "app",                            optional: read with the package's document types
 *           "operations": [{"op": "put", "id": "id:ns:type::x", "body": "{\"fields\": ...}",
 *                           "expected": {"field": {"cells": {"0": [..]}, "original": {"0": [..]}}}},
 *                          {"op": "remove", "id": "id:ns:type::y"}],
 *           "selections": ["type.field==\"value\""]},
 *  "rank": {"package": "app", "queries": ["{/search/ JSON body}"], "documents": ["id:..."],
 *           "inputs_only": ["{/search/ JSON body}"],              inputs converted, not scored
 *           "features": {"bm25(title)": 1.5}}}                   optional: needs "feed"
 * </pre>
 * The result mirrors it (see {@link PackageCheck}, {@link FeedCheck}, {@link RankCheck}). The exit status is 0
 * whenever the result was written, whatever it says; 1 when the program itself failed, 2 on bad usage.
 */
public final class VerifyVespa {

    private VerifyVespa() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: VerifyVespa REQUEST.json RESULT.json");
            System.exit(2);
        }
        ObjectMapper json = new ObjectMapper();
        JsonNode request = json.readTree(new File(args[0]));
        ObjectNode result = json.createObjectNode();
        result.put("vespa_version", PackageCheck.VERSION.toFullString());
        result.put("java_version", System.getProperty("java.version"));

        Map<String, PackageCheck.Built> built = new LinkedHashMap<>();
        ObjectNode packages = result.putObject("packages");
        long started = System.nanoTime();
        for (Iterator<Map.Entry<String, JsonNode>> it = request.path("packages").fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> entry = it.next();
            PackageCheck.Outcome outcome = PackageCheck.check(new File(entry.getValue().asText()), json);
            packages.set(entry.getKey(), outcome.report());
            if (outcome.built() != null) built.put(entry.getKey(), outcome.built());
        }
        result.put("packages_seconds", seconds(started));

        Map<String, Document> stored = Map.of();
        if (request.has("feed")) {
            started = System.nanoTime();
            PackageCheck.Built target = require(built, request.path("feed"));
            FeedCheck.Outcome feed = FeedCheck.check(target.documentTypes(), request.path("feed"), json);
            result.set("feed", feed.report());
            stored = feed.stored();
            result.put("feed_seconds", seconds(started));
        }
        if (request.has("rank")) {
            started = System.nanoTime();
            PackageCheck.Built target = require(built, request.path("rank"));
            result.set("rank", RankCheck.check(target, stored, request.path("rank"), json));
            result.put("rank_seconds", seconds(started));
        }
        json.writerWithDefaultPrettyPrinter().writeValue(new File(args[1]), result);
    }

    private static PackageCheck.Built require(Map<String, PackageCheck.Built> built, JsonNode section) {
        String name = section.path("package").asText();
        PackageCheck.Built target = built.get(name);
        if (target == null) throw new IllegalArgumentException("package '" + name + "' is not among those that built");
        return target;
    }

    private static double seconds(long startedNanos) {
        return (System.nanoTime() - startedNanos) / 1e9;
    }
}
