package pdfvisual.verify;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.yahoo.document.Document;
import com.yahoo.document.DocumentId;
import com.yahoo.document.DocumentPut;
import com.yahoo.document.DocumentRemove;
import com.yahoo.document.DocumentType;
import com.yahoo.document.DocumentTypeManager;
import com.yahoo.document.Field;
import com.yahoo.document.datatypes.FieldValue;
import com.yahoo.document.datatypes.TensorFieldValue;
import com.yahoo.document.json.DocumentOperationType;
import com.yahoo.document.json.JsonReader;
import com.yahoo.document.select.DocumentSelector;
import com.yahoo.document.select.Result;
import com.yahoo.document.serialization.DocumentDeserializerFactory;
import com.yahoo.document.serialization.DocumentSerializer;
import com.yahoo.document.serialization.DocumentSerializerFactory;
import com.yahoo.io.GrowableByteBuffer;
import com.yahoo.tensor.Tensor;

import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.TreeMap;

/**
 * Reads feed operations with Vespa's document JSON reader, against the document type the config model
 * derived from our schema, as {@code /document/v1} does: a put's body ({@code {"fields": ...}}) through
 * {@link JsonReader#readSingleDocumentStreaming}, a remove as its document id. Each put document then goes
 * through Vespa's binary document serialization and back (what the container sends the content nodes),
 * and its tensor cells are compared with the values the feed was made from.
 */
final class FeedCheck {

    record Outcome(ObjectNode report, Map<String, Document> stored) {}

    private static final JsonFactory JSON_FACTORY = new JsonFactory();

    private FeedCheck() {}

    static Outcome check(DocumentTypeManager types, JsonNode request, ObjectMapper json) {
        ObjectNode report = json.createObjectNode();
        ArrayNode results = report.putArray("operations");
        Map<String, Document> stored = new LinkedHashMap<>();
        for (JsonNode op : request.path("operations")) {
            ObjectNode result = results.addObject();
            String id = op.path("id").asText();
            String kind = op.path("op").asText();
            result.put("id", id);
            result.put("op", kind);
            try {
                switch (kind) {
                    case "put" -> {
                        Document document = readPut(types, id, op.path("body").asText());
                        stored.put(id, document);
                        compareTensors(document, op.path("expected"), result.putObject("fields"));
                    }
                    case "remove" -> {
                        DocumentId docId = new DocumentId(id);
                        new DocumentRemove(docId);
                        requireType(types, docId);
                    }
                    default -> throw new IllegalArgumentException("unknown operation '" + kind + "'");
                }
                result.put("ok", true);
            } catch (Exception e) {
                result.put("ok", false);
                result.put("error", Messages.of(e));
            }
        }
        ObjectNode selections = report.putObject("selections");
        for (JsonNode selection : request.path("selections")) {
            ObjectNode entry = selections.putObject(selection.asText());
            try {
                DocumentSelector selector = new DocumentSelector(selection.asText());
                ArrayNode matched = entry.putArray("matched");
                for (Map.Entry<String, Document> doc : stored.entrySet()) {
                    if (selector.accepts(new DocumentPut(doc.getValue())) == Result.TRUE) matched.add(doc.getKey());
                }
            } catch (Exception e) {
                entry.put("error", Messages.of(e));
            }
        }
        return new Outcome(report, stored);
    }

    private static Document readPut(DocumentTypeManager types, String id, String body) {
        JsonReader reader = new JsonReader(types, new ByteArrayInputStream(body.getBytes(StandardCharsets.UTF_8)),
                                           JSON_FACTORY);
        DocumentPut put = (DocumentPut) reader.readSingleDocumentStreaming(DocumentOperationType.PUT, id).operation();
        // Serialized and read back: the cells as the content node receives them.
        DocumentSerializer serializer = DocumentSerializerFactory.createHead(new GrowableByteBuffer());
        put.getDocument().serialize(serializer);
        GrowableByteBuffer buffer = serializer.getBuf();
        buffer.flip();
        return new Document(DocumentDeserializerFactory.createHead(types, buffer));
    }

    private static DocumentType requireType(DocumentTypeManager types, DocumentId id) {
        DocumentType type = types.getDocumentType(id.getDocType());
        if (type == null) throw new IllegalArgumentException("unknown document type '" + id.getDocType() + "'");
        return type;
    }

    /**
     * For each expected tensor field: the stored cells must equal {@code cells} exactly (label by label);
     * with {@code original} also the largest relative difference to those values is reported.
     */
    private static void compareTensors(Document document, JsonNode expected, ObjectNode out) {
        Iterator<Map.Entry<String, JsonNode>> fields = expected.fields();
        while (fields.hasNext()) {
            Map.Entry<String, JsonNode> entry = fields.next();
            ObjectNode report = out.putObject(entry.getKey());
            Field field = document.getDataType().getField(entry.getKey());
            FieldValue value = field == null ? null : document.getFieldValue(field);
            if (!(value instanceof TensorFieldValue tensorValue) || tensorValue.getTensor().isEmpty()) {
                report.put("error", "no tensor stored in field '" + entry.getKey() + "'");
                continue;
            }
            Tensor tensor = tensorValue.getTensor().get();
            report.put("type", tensor.type().toString());
            Map<String, double[]> stored = subspaces(tensor);
            report.put("subspaces", stored.size());
            compare(stored, entry.getValue().path("cells"), entry.getValue().path("original"), report);
        }
    }

    private static void compare(Map<String, double[]> stored, JsonNode cells, JsonNode original, ObjectNode report) {
        long total = 0, mismatches = 0;
        double maxRelative = 0;
        String firstMismatch = null;
        if (stored.size() != cells.size()) {
            report.put("label_error", "stored " + stored.size() + " subspaces, expected " + cells.size());
        }
        for (Map.Entry<String, double[]> subspace : stored.entrySet()) {
            JsonNode want = cells.path(subspace.getKey());
            JsonNode from = original.path(subspace.getKey());
            double[] have = subspace.getValue();
            if (want.size() != have.length) {
                report.put("label_error", "subspace '" + subspace.getKey() + "': " + have.length + " cells, expected "
                                          + want.size());
                continue;
            }
            for (int i = 0; i < have.length; i++) {
                total++;
                if (have[i] != want.get(i).asDouble()) {
                    mismatches++;
                    if (firstMismatch == null) {
                        firstMismatch = subspace.getKey() + "[" + i + "]: stored " + have[i] + ", expected " + want.get(i);
                    }
                }
                if (from.size() == have.length) {
                    double x = from.get(i).asDouble();
                    double difference = Math.abs(have[i] - x);
                    maxRelative = Math.max(maxRelative, x == 0 ? difference : difference / Math.abs(x));
                }
            }
        }
        report.put("cells", total);
        report.put("mismatches", mismatches);
        if (firstMismatch != null) report.put("first_mismatch", firstMismatch);
        if (!original.isMissingNode()) report.put("max_relative_error_vs_original", maxRelative);
    }

    /** A mixed tensor with one mapped dimension as label -> dense cells, in index order. */
    static Map<String, double[]> subspaces(Tensor tensor) {
        var type = tensor.type();
        int mapped = -1, indexed = -1;
        for (int d = 0; d < type.dimensions().size(); d++) {
            if (type.dimensions().get(d).isMapped()) mapped = d; else indexed = d;
        }
        if (mapped < 0 || indexed < 0 || type.dimensions().size() != 2) {
            throw new IllegalArgumentException("expected one mapped and one indexed dimension, got " + type);
        }
        int size = type.dimensions().get(indexed).size().orElseThrow().intValue();
        Map<String, double[]> out = new TreeMap<>();
        for (Iterator<Tensor.Cell> it = tensor.cellIterator(); it.hasNext(); ) {
            Tensor.Cell cell = it.next();
            double[] cells = out.computeIfAbsent(cell.getKey().label(mapped), k -> new double[size]);
            cells[(int) cell.getKey().numericLabel(indexed)] = cell.getValue();
        }
        return out;
    }
}
