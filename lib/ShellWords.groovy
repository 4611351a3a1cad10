/*
 * Text the pipeline computes (a slide's id, a file name made from it) as one shell word. Staged paths need no
 * quoting: Nextflow already escapes them when a script interpolates them (and quoting those again would keep the
 * backslashes).
 */
class ShellWords {

    static String quote(Object text) {
        return "'" + text.toString().replace("'", "'\\''") + "'"
    }
}
