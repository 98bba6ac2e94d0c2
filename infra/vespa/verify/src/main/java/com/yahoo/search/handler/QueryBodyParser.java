package com.yahoo.search.handler;

import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.util.Map;

/**
 * Reads a POSTed /search/ JSON body into the flat parameter map the search handler works with.
 *
 * <p>Lives in Vespa's handler package only to reach {@code Json2SingleLevelMap}, which is package-private:
 * the query inputs then reach the tensor conversion exactly as the container hands them over
 * ({@code input.query(...)} objects and arrays kept as their JSON text).
 */
public final class QueryBodyParser {

    private QueryBodyParser() {}

    public static Map<String, String> parse(String body) {
        return new Json2SingleLevelMap(new ByteArrayInputStream(body.getBytes(StandardCharsets.UTF_8))).parse();
    }
}
