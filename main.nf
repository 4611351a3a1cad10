#!/usr/bin/env nextflow
/*
 * atlaspatch-nf: whole-slide images -> tissue (SEGMENT) -> patch coordinates (TILE) [-> patch features
 * (EMBED_PATCHES, with --patch_encoders or --slide_encoders)] [-> slide embeddings (ENCODE_SLIDE, with
 * --slide_encoders)], one task per slide and stage,
 * each calling one `atlaspatch` stage command. Results land in ${params.outdir}/patches/<stem>.h5, the same layout
 * as the CLI's --output. A slide that fails is reported at the end and makes the run exit non-zero
 * (workflow.failOnIgnore), while every other slide still completes.
 */

include { ATLASPATCH } from './workflows/atlaspatch'
include { PREFLIGHT  } from './modules/local/preflight/main'

/*
 * Slide discovery: the same rules as the CLI (python/atlaspatch/slides/discovery.py). Supported extensions,
 * case-insensitive; a DICOM series folder (holding .dcm files) counts as one slide named after the folder;
 * --recursive descends into subdirectories (following links, each folder once, never --outdir); a dangling link
 * with a slide extension is a slide (that fails with its reason); stems must be unique because each one names an
 * output H5.
 */

def slideExtensions() {
    // python/atlaspatch/slides/reader.py SUPPORTED_EXTENSIONS (OpenSlide formats + plain images)
    return ['.svs', '.tif', '.tiff', '.ndpi', '.vms', '.vmu', '.scn', '.mrxs', '.bif', '.biff', '.dcm', '.dicom',
            '.svslide', '.png', '.jpg', '.jpeg', '.bmp', '.webp', '.gif']
}

def dicomExtensions() {
    return ['.dcm', '.dicom']
}

def suffixOf(Path path) {
    def name = path.fileName.toString()
    def dot  = name.lastIndexOf('.')
    return (dot > 0 && dot < name.length() - 1) ? name.substring(dot).toLowerCase() : ''
}

def stemOf(Path path) {
    def name = path.fileName.toString()
    if( java.nio.file.Files.isDirectory(path) ) return name
    def suffix = suffixOf(path)
    return suffix ? name.substring(0, name.length() - suffix.length()) : name
}

def isSlideFile(Path path) {
    // a dangling link counts, so that its slide fails with a reason instead of being skipped
    def dangling = java.nio.file.Files.isSymbolicLink(path) && !java.nio.file.Files.exists(path)
    return (java.nio.file.Files.isRegularFile(path) || dangling) && !path.fileName.toString().startsWith('.') &&
        suffixOf(path) in slideExtensions()
}

def isDicomFile(Path path) {
    return isSlideFile(path) && suffixOf(path) in dicomExtensions()
}

def isDicomSeries(Path dir) {
    return java.nio.file.Files.isDirectory(dir) && java.nio.file.Files.list(dir).withCloseable { s -> s.anyMatch { p -> isDicomFile(p) } }
}

def asSource(Path path) {
    // a .dcm file stands for its series folder
    def target = isDicomFile(path) ? path.parent : path
    return [path: target, stem: stemOf(target)]
}

def folderKey(Path dir) {
    try { return java.nio.file.Files.readAttributes(dir, java.nio.file.attribute.BasicFileAttributes).fileKey() }
    catch( IOException ignored ) { return null }
}

/*
 * Slide files below dir, following links to folders but entering each folder once (a link back up the tree would
 * loop; an alias would list its slides twice), real folders before links, never the run's outdir.
 */
def walkSlides(Path dir, Set seen, Object skipKey, List files) {
    def key = folderKey(dir)
    if( key != null && (key == skipKey || !seen.add(key)) ) return   // null: a store without file keys (e.g. S3), no links
    def entries = java.nio.file.Files.list(dir).withCloseable { s -> s.toList() }.sort(false) { a, b ->
        (java.nio.file.Files.isSymbolicLink(a) <=> java.nio.file.Files.isSymbolicLink(b)) ?: a.fileName.toString() <=> b.fileName.toString()
    }
    entries.each { p ->
        if( java.nio.file.Files.isDirectory(p) ) walkSlides(p, seen, skipKey, files)
        else if( isSlideFile(p) ) files << p
    }
}

def outdirKey() {
    def outdir = file(params.outdir.toString())
    return java.nio.file.Files.isDirectory(outdir) ? folderKey(outdir) : null
}

def realPathOf(Path path) {
    try { return path.toRealPath().toString() }
    catch( IOException ignored ) { return path.toAbsolutePath().normalize().toString() }
}

def scanFolder(Path folder, boolean recursive) {
    def files = []
    if( recursive ) {
        walkSlides(folder, [] as Set, outdirKey(), files)
    }
    else {
        def entries = java.nio.file.Files.list(folder).withCloseable { s -> s.toList() }
        files.addAll(entries.findAll { p -> isSlideFile(p) })
        entries.findAll { p -> isDicomSeries(p) }.each { sub ->
            java.nio.file.Files.list(sub).withCloseable { s -> s.forEach { p -> if( isDicomFile(p) ) files << p } }
        }
    }
    return files.collect { p -> asSource(p) }
}

def findSlides(String input, boolean recursive) {
    def sources = []
    if( input ==~ /.*[*?\[{].*/ ) {
        // a glob: matching slide files, DICOM series folders, and (with --recursive) slides under matching folders
        files(input, type: 'any').each { Path p ->
            if( isSlideFile(p) ) sources << asSource(p)
            else if( java.nio.file.Files.isDirectory(p) ) {
                if( recursive ) sources.addAll(scanFolder(p, true))
                else if( isDicomSeries(p) ) sources << [path: p, stem: stemOf(p)]
            }
        }
    }
    else {
        Path path = file(input)
        if( !java.nio.file.Files.exists(path) ) error("--input ${input}: no such file or directory")
        if( java.nio.file.Files.isDirectory(path) ) sources.addAll(scanFolder(path, recursive))
        else sources << asSource(path)   // one file, whatever its extension: the tool says if it cannot read it
    }
    // one slide reached by several paths under the same stem (links) counts once
    sources = sources.sort { s -> s.path.toString() }.unique { s -> [s.stem, realPathOf(s.path)] }
    if( !sources ) error("--input ${input}: no slides found (extensions: ${slideExtensions().join(' ')})")
    def clashes = sources.groupBy { s -> s.stem }.findAll { _stem, group -> group.size() > 1 }
    if( clashes ) {
        def listing = clashes.collect { stem, group -> "${stem}: ${group*.path.join(', ')}" }.join('; ')
        error("slides with the same stem would write the same H5 (${listing}); rename or split the run")
    }
    return sources
}

/*
 * --help: the parameters of nextflow_schema.json, grouped as there, with their defaults.
 */
def helpText() {
    def schema = new groovy.json.JsonSlurper().parse(file("${projectDir}/nextflow_schema.json").toFile())
    def lines  = ["Usage: nextflow run ${projectDir} --input SLIDES --outdir OUT --patch_size 224 --target_mag 20 [options]",
                  "       nextflow run ${projectDir} -params-file params.yaml [-profile test|docker|singularity|gpu|slurm|...]", '']
    schema['$defs'].each { _key, group ->
        lines << "${group.title}:"
        group.properties.findAll { _name, prop -> !prop.hidden }.each { name, prop ->
            def required = name in (group.required ?: []) ? ' (required)' : ''
            def deflt    = prop.containsKey('default') ? " [default: ${prop.default}]" : ''
            lines << "  --${name.padRight(22)} ${prop.description}${required}${deflt}"
        }
        lines << ''
    }
    return lines.join('\n')
}

/*
 * The run's parameters for PREFLIGHT, as JSON. The report suffix (the start time) is left out so that an unchanged
 * run stays cached under -resume.
 */
def paramsJson() {
    def skip = ['trace_report_suffix', 'help']
    return groovy.json.JsonOutput.toJson(params.findAll { k, _v -> !(k in skip) }.collectEntries { k, v ->
        [k, v instanceof CharSequence ? v.toString() : v]
    })
}

/*
 * --input samplesheet.csv (assets/schema_input.json): id,slide[,mpp]. The id names the slide's outputs; relative
 * slide paths start at the samplesheet's folder. Existence is checked here, on the launching machine; the rows'
 * form (id characters, mpp a positive number, unique ids) by PREFLIGHT against the schema.
 */
def isSamplesheet(String input) {
    return input.toLowerCase().endsWith('.csv')
}

def readSamplesheet(String input) {
    Path sheet = file(input)
    if( !java.nio.file.Files.isRegularFile(sheet) ) error("--input ${input}: no such samplesheet")
    def rows = sheet.splitCsv(header: true, strip: true)
    if( !rows ) error("--input ${input}: the samplesheet has no rows (columns: id,slide[,mpp])")
    return rows.withIndex().collect { row, i ->
        if( !row.slide ) error("--input ${input} row ${i + 2}: no slide (columns: id,slide[,mpp])")
        Path slide = sheet.toAbsolutePath().parent.resolve(row.slide.toString()).normalize()
        if( !java.nio.file.Files.exists(slide) ) error("--input ${input} row ${i + 2}: slide ${row.slide} does not exist")
        [path: slide, stem: (row.id ?: '').toString(), mpp: row.mpp ? row.mpp.toString() : null]
    }
}

def checkParams() {
    // an unquoted glob (--input *.svs) reaches the pipeline as one --input and the other files as positional
    // arguments (Nextflow also leaves a 'true' there for -stub-run: only existing paths count)
    def stray = args.findAll { arg -> java.nio.file.Files.exists(java.nio.file.Paths.get(arg.toString())) }
    if( stray ) error("unexpected argument(s) ${stray.join(' ')}: quote a glob given to --input, e.g. --input 'slides/*.svs'")
    def missing = ['input', 'outdir', 'patch_size', 'target_mag'].findAll { name -> params[name] == null || params[name] == '' }
    if( missing ) {
        // the CLI's --patch-size spelling: Nextflow keeps it as params.patchSize, not params.patch_size
        def camel      = { String name -> name.replaceAll(/_([a-z])/) { _all, c -> c.toUpperCase() } }
        def misspelled = missing.findAll { name -> params.containsKey(name.replace('_', '-')) || params.containsKey(camel(name)) }
        def hint = misspelled ? "; write ${misspelled.collect { name -> '--' + name }.join(', ')} (snake_case), not " +
                                "${misspelled.collect { name -> '--' + name.replace('_', '-') }.join(', ')}" : ''
        error("missing required parameter(s): ${missing.collect { name -> '--' + name }.join(', ')} " +
              "(e.g. -params-file params.yaml, or -profile test)${hint}")
    }
    ['patch_size', 'target_mag'].each { name ->
        if( !(params[name] instanceof Integer) || params[name] < 1 ) error("--${name} must be a positive integer, got '${params[name]}'")
    }
    if( params.step_size != null && (!(params.step_size instanceof Integer) || params.step_size < 1) ) {
        error("--step_size must be a positive integer, got '${params.step_size}'")
    }
    checkFeatureParams()
}

def devicePattern() {
    return ~/^(cpu|cuda|cuda:\d+)$/   // python/atlaspatch/devices.py
}

/*
 * --feature_plugin entries, split as the CLI does (python/atlaspatch/encoders/patch/plugins.py): a name ending in
 * .py or an existing path is a file, staged into the task; anything else is an importable module name, passed
 * through as it is (conf/modules.config), which the tasks' Python environment must provide.
 */
def featurePlugins() {
    def entries = params.feature_plugin ? params.feature_plugin.toString().tokenize(',')*.trim().findAll { e -> e } : []
    def isFile  = { String e -> e.endsWith('.py') || java.nio.file.Files.exists(java.nio.file.Paths.get(e)) }
    return [files: entries.findAll { e -> isFile(e) }, modules: entries.findAll { e -> !isFile(e) }]
}

def checkFeatureParams() {
    if( params.patch_encoders != null && params.patch_encoders != '' ) {
        def names = params.patch_encoders instanceof CharSequence ? params.patch_encoders.toString().tokenize(', ') : []
        if( !names ) error("--patch_encoders must name at least one patch encoder (comma-separated), got '${params.patch_encoders}'")
        def repeated = names*.toLowerCase().countBy { n -> n }.findAll { _n, count -> count > 1 }.keySet()
        if( repeated ) error("--patch_encoders names ${repeated.join(', ')} more than once")
    }
    if( !(params.feature_batch_size instanceof Integer) || params.feature_batch_size < 1 ) {
        error("--feature_batch_size must be a positive integer, got '${params.feature_batch_size}'")
    }
    if( !(params.feature_num_workers instanceof Integer) || params.feature_num_workers < 0 ) {
        error("--feature_num_workers must be an integer >= 0, got '${params.feature_num_workers}'")
    }
    if( params.slide_encoders != null && params.slide_encoders != '' ) {
        def names = params.slide_encoders instanceof CharSequence ? params.slide_encoders.toString().tokenize(', ') : []
        if( !names ) error("--slide_encoders must name at least one slide encoder (comma-separated), got '${params.slide_encoders}'")
        def repeated = names*.toLowerCase().countBy { n -> n }.findAll { _n, count -> count > 1 }.keySet()
        if( repeated ) error("--slide_encoders names ${repeated.join(', ')} more than once")
    }
    def precisions = ['float32', 'float16', 'bfloat16']
    if( !(params.feature_precision?.toString()?.toLowerCase() in precisions) ) {
        error("--feature_precision must be one of ${precisions.join(', ')}, got '${params.feature_precision}'")
    }
    def device = params.feature_device != null ? params.feature_device : params.device
    if( !(device?.toString()?.trim()?.toLowerCase() ==~ devicePattern()) ) {
        error("--${params.feature_device != null ? 'feature_device' : 'device'} must be cpu, cuda or cuda:N, got '${device}'")
    }
    if( params.model_dir != null && params.model_dir != '' ) {
        if( !java.nio.file.Files.isDirectory(file(params.model_dir.toString())) ) {
            error("--model_dir ${params.model_dir}: no such directory")
        }
    }
    featurePlugins().files.each { f ->
        if( !java.nio.file.Files.isRegularFile(file(f)) ) error("--feature_plugin ${f}: no such file")
    }
}

/*
 * A stub run publishes empty files: never over the results of real runs.
 */
def refuseStubRunOverResults() {
    if( !workflow.stubRun ) return
    def patches = file("${params.outdir}/patches")
    if( java.nio.file.Files.isDirectory(patches) && java.nio.file.Files.list(patches).withCloseable { s -> s.anyMatch { p -> p.toString().endsWith('.h5') } } )
        error("-stub-run would overwrite the results in ${patches} with empty files: use another --outdir")
}

/*
 * --mpp_csv: rows name slides by their output name (the file stem, or the samplesheet id); a row that names no slide
 * of this run is reported, as the CLI does (a typo would otherwise silently not apply).
 */
def mppCsv(List slides, boolean sheet) {
    def csv = file(params.mpp_csv)
    if( !java.nio.file.Files.isRegularFile(csv) ) error("--mpp_csv ${params.mpp_csv}: no such file")
    def ids   = slides*.stem as Set
    def names = csv.readLines().drop(1).collect { line -> line.split(',', -1)[0].trim().replaceAll(/^"|"$/, '') }
        .findAll { name -> name }
    def unmatched = names.findAll { name ->
        def base = name.tokenize('/\\')[-1]
        def stem = base.lastIndexOf('.') > 0 ? base.substring(0, base.lastIndexOf('.')) : base
        !(base in ids) && !(stem in ids)
    }
    if( unmatched ) {
        def hint = sheet ? ' (with a samplesheet, rows name the id; or use its mpp column)' : ''
        log.warn "atlaspatch-nf: --mpp_csv rows that match no slide of this run${hint}: ${unmatched.join(', ')}"
    }
    return csv
}

/*
 * Failure summary, read from this run's trace file (the trace observer has written and closed it before
 * onComplete handlers run): the final attempt of each task, and the last stderr line of each failed one.
 */
def traceFile() {
    return file("${params.outdir}/pipeline_info/execution_trace_${params.trace_report_suffix}.txt")
}

def lastLine(String workdir, String name) {
    def log = workdir ? file("${workdir}/${name}") : null
    if( !log?.exists() ) return ''
    return log.readLines().findAll { line -> line.trim() }.with { ls -> ls ? ls[-1].trim() : '' }
}

def failedTasks() {
    def trace = traceFile()
    if( !trace.exists() ) return null
    def lines  = trace.readLines().findAll { line -> line.trim() }
    if( !lines ) return null
    def header = lines[0].split('\t') as List
    def last   = [:]   // "process|tag" -> the row of its latest attempt
    lines.drop(1).each { line ->
        def cells = line.split('\t', -1) as List
        def row   = [header, cells].transpose().collectEntries { kv -> [kv[0], kv[1]] }
        last["${row.process ?: row.name}|${row.tag}"] = row
    }
    return last.values().findAll { row -> row.status in ['FAILED', 'ABORTED'] }.collect { row ->
        def reason = lastLine(row.workdir, '.command.err') ?: lastLine(row.workdir, '.command.log')  // log: staging
        [tag: row.tag, process: row.process ?: row.name, exit: row.exit, status: row.status,
         reason: reason.size() > 300 ? reason.take(297) + '...' : reason, workdir: row.workdir]
    }
}

def summarise(run, boolean pickedUp, int slideCount) {
    if( run.preview ) return   // -preview runs no task
    def failed = failedTasks()
    if( failed == null ) {
        def n = run.stats.ignoredCount
        if( n ) log.warn "atlaspatch-nf: ${n} task(s) failed and were ignored (no trace file to name them)"
    }
    else if( failed.any { t -> t.process == 'PREFLIGHT' } ) {
        def t = failed.find { t -> t.process == 'PREFLIGHT' }
        log.error "atlaspatch-nf: the parameters were refused before any slide was processed:\n  ${t.reason}\n" +
                  "Run with --help for the parameters and their types."
    }
    else if( failed ) {
        def failedSlides = failed*.tag.unique()
        def text = failed.collect { t ->
            "  ${t.tag}  ${t.process}  ${t.status} exit ${t.exit ?: '-'}" +
            (t.reason ? "\n      ${t.reason}" : '') + (t.workdir ? "\n      work dir: ${t.workdir}" : '')
        }.join('\n')
        def others = run.success && failedSlides.size() < slideCount ? ', the other slides completed' : ''
        // -resume matches this run's tasks only when this run took no published H5 (see pickUp in the workflow)
        def again = pickedUp
            ? "Fix the cause and run the same command again (without -resume): the slides completed in ${params.outdir} are reused from there."
            : "Fix the cause and run the same command again with -resume: only the failed slides are redone."
        log.error "atlaspatch-nf: ${failedSlides.size()} slide(s) failed${others}:\n${text}\n${again}"
    }
    if( run.success && !failed && !run.stats.ignoredCount ) {
        log.info "atlaspatch-nf: done, results in ${params.outdir}"
    }
}

workflow {

    main:
    if( params.help ) {
        log.info helpText()
        exit 0
    }
    checkParams()
    def sheet  = isSamplesheet(params.input.toString())
    def slides = sheet ? readSamplesheet(params.input.toString()) : findSlides(params.input.toString(), params.recursive as boolean)
    log.info "atlaspatch-nf: ${slides.size()} slide(s) from ${params.input} -> ${params.outdir}"

    refuseStubRunOverResults()
    mpp_csv   = params.mpp_csv ? mppCsv(slides, sheet) : []
    // EMBED_PATCHES stages these into its tasks (paths, not --model-dir strings), so tasks need no network
    model_dir = params.model_dir ? file(params.model_dir, checkIfExists: true, type: 'dir') : []
    plugins   = featurePlugins().files.collect { f -> file(f, checkIfExists: true) }

    // Every slide task waits for the parameters to pass the schema (PREFLIGHT); its output is not an input of
    // theirs, so re-validating never invalidates their -resume cache.
    PREFLIGHT (
        paramsJson(),
        file("${projectDir}/nextflow_schema.json", checkIfExists: true),
        plugins,
        sheet ? file(params.input) : [],
        file("${projectDir}/assets/schema_input.json", checkIfExists: true)
    )
    ch_slides = channel.fromList(slides.collect { s -> [[id: s.stem] + (s.mpp ? [mpp: s.mpp] : [:]), s.path] })
        .combine(PREFLIGHT.out.ok)
        .map { meta, slide, _ok -> [meta, slide] }

    // Outdir reuse: without -resume (whose cache already covers it) and without --force, an H5 that an earlier run
    // published for a slide is where that slide starts from; every stage then reuses what still matches it.
    def pickUp = !workflow.resume && !params.force
    def previous = slides.collect { s ->
        def published = file("${params.outdir}/patches/${s.stem}.h5")
        [[id: s.stem] + (s.mpp ? [mpp: s.mpp] : [:]), pickUp && published.exists() ? published : []]
    }
    def pickedUp = previous.any { _meta, h5 -> h5 }
    ch_previous = channel.fromList(previous)

    ATLASPATCH ( ch_slides, ch_previous, mpp_csv, model_dir, plugins )

    // Software versions of every process that ran, PREFLIGHT's included
    PREFLIGHT.out.versions
        .mix(ATLASPATCH.out.versions)
        .collectFile(name: 'atlaspatch_software_versions.yml', storeDir: "${params.outdir}/pipeline_info",
                     sort: true, newLine: false)

    // Summary of failed slides; the run's exit status is non-zero through workflow.failOnIgnore (nextflow.config).
    def run = workflow   // inside the handler closure `workflow` does not resolve to the run's metadata
    def slideCount = slides.size()
    workflow.onComplete { summarise(run, pickedUp, slideCount) }
}
