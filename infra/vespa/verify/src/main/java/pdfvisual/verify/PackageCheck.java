package pdfvisual.verify;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.yahoo.component.Version;
import com.yahoo.config.ConfigInstance;
import com.yahoo.config.application.api.ApplicationPackage;
import com.yahoo.config.application.api.DeployLogger;
import com.yahoo.config.model.NullConfigModelRegistry;
import com.yahoo.config.model.api.ValidationParameters;
import com.yahoo.config.model.api.ValidationParameters.CheckRouting;
import com.yahoo.config.model.api.ValidationParameters.FailOnIncompatibleChange;
import com.yahoo.config.model.api.ValidationParameters.IgnoreValidationErrors;
import com.yahoo.config.model.application.provider.ApplicationPackageXmlFilesValidator;
import com.yahoo.config.model.application.provider.FilesApplicationPackage;
import com.yahoo.config.model.deploy.DeployState;
import com.yahoo.config.model.deploy.TestProperties;
import com.yahoo.config.provision.Zone;
import com.yahoo.document.DocumentTypeManager;
import com.yahoo.document.config.DocumentmanagerConfig;
import com.yahoo.vespa.config.ConfigPayload;
import com.yahoo.vespa.config.search.AttributesConfig;
import com.yahoo.vespa.config.search.RankProfilesConfig;
import com.yahoo.vespa.config.search.core.OnnxModelsConfig;
import com.yahoo.vespa.config.search.core.RankingConstantsConfig;
import com.yahoo.vespa.config.search.core.RankingExpressionsConfig;
import com.yahoo.vespa.model.VespaModel;
import com.yahoo.vespa.model.VespaVersion;
import com.yahoo.vespa.model.application.validation.Validation;
import com.yahoo.vespa.model.container.ApplicationContainerCluster;
import com.yahoo.vespa.model.search.DocumentDatabase;

import java.io.File;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.logging.Level;

/**
 * Builds Vespa's config model from an application package directory the way a config server prepares a
 * deployment: file-extension and XML schema validation of the package, preprocessing, the model itself
 * (schema parsing, indexing scripts, derived configs, rank-profile compilation with tensor type
 * resolution) and the deploy-time validators. Any failure is reported with Vespa's own message.
 */
final class PackageCheck {

    static final Version VERSION = new Version(VespaVersion.major, VespaVersion.minor, VespaVersion.micro);

    /** What later checks need from a package that built. */
    record Built(VespaModel model,
                 DocumentTypeManager documentTypes,
                 RankProfilesConfig rankProfiles,
                 RankingConstantsConfig constants,
                 RankingExpressionsConfig expressions,
                 OnnxModelsConfig onnxModels) {}

    record Outcome(ObjectNode report, Built built) {}

    private PackageCheck() {}

    static Outcome check(File dir, ObjectMapper json) {
        ObjectNode report = json.createObjectNode();
        report.put("path", dir.getPath());
        CollectingLogger logger = new CollectingLogger();
        Built built = null;
        try {
            built = build(dir, logger);
            report.put("ok", true);
            describe(built, report, json);
        } catch (Exception | LinkageError e) {
            report.put("ok", false);
            report.put("error", Messages.of(e));
            report.put("error_type", e.getClass().getName());
            if (System.getenv("VERIFY_VESPA_TRACE") != null) e.printStackTrace();
        }
        ArrayNode log = report.putArray("deploy_log");
        for (String line : logger.lines) log.add(line);
        return new Outcome(report, built);
    }

    private static Built build(File dir, DeployLogger logger) throws Exception {
        FilesApplicationPackage files = FilesApplicationPackage.fromDir(dir, Map.of());
        files.validateFileExtensions();
        ApplicationPackage preprocessed = files.preprocess(Zone.defaultZone(), logger);
        ApplicationPackageXmlFilesValidator xml = ApplicationPackageXmlFilesValidator.create(dir, VERSION);
        xml.checkApplication();
        xml.checkIncludedDirs(preprocessed);

        ValidationParameters validation = new ValidationParameters(
                IgnoreValidationErrors.FALSE, FailOnIncompatibleChange.TRUE, CheckRouting.TRUE);
        DeployState state = new DeployState.Builder()
                .applicationPackage(preprocessed)
                .deployLogger(logger)
                .properties(new TestProperties())
                .vespaVersion(VERSION)
                .wantedNodeVespaVersion(VERSION)
                .build(validation);
        VespaModel model = new VespaModel(new NullConfigModelRegistry(), state);
        new Validation().validate(model, validation, state);

        DocumentDatabase database = documentDatabase(model);
        ApplicationContainerCluster container = model.getContainerClusters().values().iterator().next();
        DocumentmanagerConfig documents = model.getConfig(DocumentmanagerConfig.class, container.getConfigId());
        return new Built(model,
                         new DocumentTypeManager(documents),
                         config(database, new RankProfilesConfig.Builder()),
                         config(database, new RankingConstantsConfig.Builder()),
                         config(database, new RankingExpressionsConfig.Builder()),
                         config(database, new OnnxModelsConfig.Builder()));
    }

    /** The content node's view of the (single) schema: where rank profiles and attributes are derived. */
    private static DocumentDatabase documentDatabase(VespaModel model) {
        List<DocumentDatabase> found = new ArrayList<>();
        model.id2producer().values().forEach(p -> { if (p instanceof DocumentDatabase d) found.add(d); });
        if (found.isEmpty()) throw new IllegalStateException("the model has no indexed document database");
        return found.get(0);
    }

    private static RankProfilesConfig config(DocumentDatabase db, RankProfilesConfig.Builder b) {
        db.getConfig(b);
        return b.build();
    }

    private static RankingConstantsConfig config(DocumentDatabase db, RankingConstantsConfig.Builder b) {
        db.getConfig(b);
        return b.build();
    }

    private static RankingExpressionsConfig config(DocumentDatabase db, RankingExpressionsConfig.Builder b) {
        db.getConfig(b);
        return b.build();
    }

    private static OnnxModelsConfig config(DocumentDatabase db, OnnxModelsConfig.Builder b) {
        db.getConfig(b);
        return b.build();
    }

    private static void describe(Built built, ObjectNode report, ObjectMapper json) throws IOException {
        VespaModel model = built.model();
        report.put("hosts", model.getHosts().size());
        report.set("container_clusters", json.valueToTree(model.getContainerClusters().keySet()));
        report.set("document_types_by_cluster", json.valueToTree(model.documentTypesByCluster()));
        ObjectNode indexing = report.putObject("indexing_cluster");  // the container cluster running indexing
        model.getContentClusters().forEach(
                (name, cluster) -> indexing.put(name, cluster.getSearch().getIndexingDocproc().getClusterName(name)));
        DocumentDatabase database = documentDatabase(model);
        AttributesConfig.Builder attributes = new AttributesConfig.Builder();
        database.getConfig(attributes);
        report.set("attributes", payload(attributes.build(), json).get("attribute"));
        ObjectNode profiles = report.putObject("rank_profiles");
        for (RankProfilesConfig.Rankprofile profile : built.rankProfiles().rankprofile()) {
            ArrayNode properties = profiles.putArray(profile.name());
            for (RankProfilesConfig.Rankprofile.Fef.Property p : profile.fef().property()) {
                properties.add(json.createArrayNode().add(p.name()).add(p.value()));
            }
        }
    }

    private static JsonNode payload(ConfigInstance config, ObjectMapper json) throws IOException {
        return json.readTree(ConfigPayload.fromInstance(config).toString());
    }

    /** Keeps what Vespa logs while preparing, as a deploying user would see it. */
    private static final class CollectingLogger implements DeployLogger {

        final List<String> lines = new ArrayList<>();

        @Override
        public void log(Level level, String message) {
            lines.add(level.getName() + ": " + message);
        }
    }
}
