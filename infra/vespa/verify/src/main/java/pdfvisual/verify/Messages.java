package pdfvisual.verify;

import java.util.ArrayList;
import java.util.List;

/** Vespa's error messages, as a deploying or feeding user would read them. */
final class Messages {

    private Messages() {}

    /** The messages of a throwable and its causes, joined with ": ", each once. */
    static String of(Throwable e) {
        List<String> parts = new ArrayList<>();
        for (Throwable t = e; t != null; t = t.getCause()) {
            String message = t.getMessage() != null ? t.getMessage() : t.getClass().getSimpleName();
            if (parts.stream().noneMatch(p -> p.contains(message))) parts.add(message);
            if (t.getCause() == t) break;
        }
        return String.join(": ", parts);
    }
}
