package pdfvisual.verify;

import ai.vespa.models.evaluation.FunctionEvaluator;
import ai.vespa.models.evaluation.Model;
import ai.vespa.models.evaluation.RankProfilesConfigImporter;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.yahoo.document.Document;
import com.yahoo.document.Field;
import com.yahoo.document.datatypes.FieldValue;
import com.yahoo.document.datatypes.TensorFieldValue;
import com.yahoo.language.Language;
import com.yahoo.search.handler.QueryBodyParser;
import com.yahoo.search.schema.internal.TensorConverter;
import com.yahoo.searchlib.rankingexpression.RankingExpression;
import com.yahoo.searchlib.rankingexpression.parser.ParseException;
import com.yahoo.searchlib.rankingexpression.rule.CompositeNode;
import com.yahoo.searchlib.rankingexpression.rule.ConstantNode;
import com.yahoo.searchlib.rankingexpression.rule.ExpressionNode;
import com.yahoo.searchlib.rankingexpression.rule.OperationNode;
import com.yahoo.searchlib.rankingexpression.rule.Operator;
import com.yahoo.searchlib.rankingexpression.rule.TensorFunctionNode;
import com.yahoo.tensor.Tensor;
import com.yahoo.tensor.TensorType;
import com.yahoo.tensor.functions.Join;
import com.yahoo.tensor.functions.ScalarFunctions;
import com.yahoo.vespa.config.search.RankProfilesConfig;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Evaluates every rank profile's phases with Vespa's Java ranking-expression and tensor evaluation.
 *
 * <p>The expressions are the compiled rank profiles, read from the rank-profiles config the config model
 * derives for the content nodes (function references resolved to the profile's compiled functions, as
 * Vespa's stateless model evaluation imports them), not retyped. Query inputs come from the /search/ JSON
 * body the way the container reads it (flattened by the search handler, then converted to the input types
 * the profile declares); attributes are the tensors of the documents the feed check read and serialized.
 * Features no document or query provides (e.g. {@code bm25(title)}) take the values the request gives.
 */
final class RankCheck {

    private static final String QUERY_TYPE = "vespa.type.query.";
    private static final String[] PHASES = {"firstphase", "secondphase"};
    /** Profiles Vespa adds to every schema (nativeRank, no ranking): not ours to check. */
    private static final Set<String> BUILT_IN_PROFILES = Set.of("default", "unranked");

    private RankCheck() {}

    static ObjectNode check(PackageCheck.Built built, Map<String, Document> documents, JsonNode request,
                            ObjectMapper json) {
        ObjectNode report = json.createObjectNode();
        RankProfilesConfig profilesConfig = forEvaluation(built.rankProfiles(), report.putArray("java_rewrites"));
        Map<String, Model> models = new RankProfilesConfigImporter(null, null)
                .importFrom(profilesConfig, built.constants(), built.expressions(), built.onnxModels());
        List<String> documentIds = new ArrayList<>();
        request.path("documents").forEach(id -> documentIds.add(id.asText()));
        report.set("documents", json.valueToTree(documentIds));
        Map<String, Double> features = new LinkedHashMap<>();
        request.path("features").fields().forEachRemaining(e -> features.put(e.getKey(), e.getValue().asDouble()));
        List<Map<String, String>> queries = new ArrayList<>();
        for (JsonNode body : request.path("queries")) queries.add(QueryBodyParser.parse(body.asText()));
        List<Map<String, String>> inputsOnly = new ArrayList<>();  // converted, not scored (large queries)
        for (JsonNode body : request.path("inputs_only")) inputsOnly.add(QueryBodyParser.parse(body.asText()));

        ObjectNode profiles = report.putObject("profiles");
        for (RankProfilesConfig.Rankprofile profile : built.rankProfiles().rankprofile()) {
            Model model = models.get(profile.name());
            if (BUILT_IN_PROFILES.contains(profile.name()) || model == null) continue;
            ObjectNode out = profiles.putObject(profile.name());
            try {
                List<Map<String, Tensor>> inputs = queryInputs(profile, queries, out.putArray("inputs_converted"));
                queryInputs(profile, inputsOnly, out.putArray("inputs_only_converted"));
                for (String phase : PHASES) {
                    if (model.functions().stream().noneMatch(f -> f.getName().equals(phase))) continue;
                    ObjectNode phaseOut = out.putObject(phase);
                    phaseOut.put("expression", model.evaluatorOf(phase).function().getBody().getRoot().toString());
                    ArrayNode scores = phaseOut.putArray("scores");
                    long started = System.nanoTime();
                    for (Map<String, Tensor> query : inputs) {
                        ArrayNode row = scores.addArray();
                        // Documents in parallel: evaluators are independent (each copies the model's context).
                        documentIds.parallelStream()
                                   .map(id -> evaluate(model, phase, query, documents.get(id), features))
                                   .toList()
                                   .forEach(row::add);
                    }
                    phaseOut.put("seconds", (System.nanoTime() - started) / 1e9);
                }
                out.put("ok", true);
            } catch (Exception e) {
                out.put("ok", false);
                out.put("error", Messages.of(e));
            }
        }
        return report;
    }

    /**
     * The config as this check evaluates it. Two differences from what the content nodes get, both reported:
     *
     * <ul>
     * <li>No match-feature declarations. Stateless evaluation (the importer's use) takes match features as
     *     values computed by the content nodes, so it leaves functions named as match features unresolved;
     *     here we evaluate on the content node's behalf, where they are the profile's functions.</li>
     * <li>{@code c / x} with a number {@code c} and a tensor {@code x} becomes {@code join(c, x, f(a,b)(a / b))},
     *     the same cells: the Java evaluator's numbers cannot divide by a tensor ("Cannot perform divide on
     *     ..."), while the content nodes' C++ evaluation (and the tensor join here) can.</li>
     * </ul>
     */
    private static RankProfilesConfig forEvaluation(RankProfilesConfig config, ArrayNode rewrites) {
        RankProfilesConfig.Builder builder = new RankProfilesConfig.Builder();
        for (RankProfilesConfig.Rankprofile profile : config.rankprofile()) {
            RankProfilesConfig.Rankprofile.Fef.Builder fef = new RankProfilesConfig.Rankprofile.Fef.Builder();
            for (RankProfilesConfig.Rankprofile.Fef.Property p : profile.fef().property()) {
                if (p.name().equals("vespa.match.feature")) continue;
                String value = p.value();
                if (p.name().endsWith(".rankingScript") || p.name().matches("vespa\\.rank\\.\\w+phase")) {
                    value = rewriteScalarDivisions(value);
                    if (!value.equals(p.value())) {
                        rewrites.addObject().put("profile", profile.name()).put("property", p.name())
                                .put("from", p.value()).put("to", value);
                    }
                }
                fef.property(new RankProfilesConfig.Rankprofile.Fef.Property.Builder().name(p.name()).value(value));
            }
            builder.rankprofile(new RankProfilesConfig.Rankprofile.Builder().name(profile.name()).fef(fef));
        }
        return builder.build();
    }

    private static String rewriteScalarDivisions(String script) {
        try {
            return rewrite(new RankingExpression(script).getRoot()).toString();
        } catch (ParseException e) {
            throw new IllegalArgumentException("Vespa cannot parse its own compiled expression '" + script + "'", e);
        }
    }

    private static ExpressionNode rewrite(ExpressionNode node) {
        if (node instanceof CompositeNode composite) {
            node = composite.setChildren(composite.children().stream().map(RankCheck::rewrite).toList());
        }
        if (node instanceof OperationNode operation && operation.operators().equals(List.of(Operator.divide))
                && operation.children().get(0) instanceof ConstantNode) {
            return new TensorFunctionNode(new Join<>(TensorFunctionNode.wrap(operation.children().get(0)),
                                                     TensorFunctionNode.wrap(operation.children().get(1)),
                                                     ScalarFunctions.divide()));
        }
        return node;
    }

    /** Each query body's {@code input.query(...)} values as tensors of the types the profile declares. */
    private static List<Map<String, Tensor>> queryInputs(RankProfilesConfig.Rankprofile profile,
                                                         List<Map<String, String>> queries, ArrayNode converted) {
        Map<String, TensorType> declared = new LinkedHashMap<>();
        for (RankProfilesConfig.Rankprofile.Fef.Property p : profile.fef().property()) {
            if (p.name().startsWith(QUERY_TYPE)) {
                declared.put("query(" + p.name().substring(QUERY_TYPE.length()) + ")", TensorType.fromSpec(p.value()));
            }
        }
        TensorConverter converter = new TensorConverter(Map.of());
        List<Map<String, Tensor>> out = new ArrayList<>();
        for (Map<String, String> parameters : queries) {
            Map<String, Tensor> inputs = new LinkedHashMap<>();
            for (Map.Entry<String, String> parameter : parameters.entrySet()) {
                if (!parameter.getKey().startsWith("input.")) continue;
                String name = parameter.getKey().substring("input.".length());
                TensorType type = declared.get(name);
                if (type == null) throw new IllegalArgumentException("the profile declares no input " + name);
                inputs.put(name, converter.convertTo(type, name, parameter.getValue(), Language.UNKNOWN, Map.of(),
                                                     null, null));
            }
            converted.add(inputs.size());
            out.add(inputs);
        }
        return out;
    }

    private static double evaluate(Model model, String phase, Map<String, Tensor> query, Document document,
                                   Map<String, Double> features) {
        FunctionEvaluator evaluator = model.evaluatorOf(phase);
        for (String argument : evaluator.function().argumentTypes().keySet()) {
            if (argument.startsWith("query(")) {
                Tensor value = query.get(argument);
                if (value == null) throw new IllegalArgumentException("the query body has no input." + argument);
                evaluator.bind(argument, value);
            } else if (argument.startsWith("attribute(")) {
                evaluator.bind(argument, attribute(document, argument));
            } else if (features.containsKey(argument)) {
                evaluator.bind(argument, features.get(argument));
            } else {
                throw new IllegalArgumentException("no value for rank feature " + argument);
            }
        }
        return evaluator.evaluate().asDouble();
    }

    private static Tensor attribute(Document document, String feature) {
        String name = feature.substring("attribute(".length(), feature.length() - 1);
        Field field = document.getDataType().getField(name);
        FieldValue value = field == null ? null : document.getFieldValue(field);
        if (value instanceof TensorFieldValue tensor && tensor.getTensor().isPresent()) return tensor.getTensor().get();
        throw new IllegalArgumentException("document " + document.getId() + " has no tensor in " + feature);
    }
}
