process PREFLIGHT {
    tag 'parameters'
    label 'process_single'

    input:
    val(params_json)                                       // the run's parameters as JSON (see main.nf)
    path(schema)                                           // nextflow_schema.json
    path(plugins  , stageAs: 'atlaspatch_plugins*/*')      // --feature-plugin files, or [] for none
    path(samplesheet, stageAs: 'samplesheet/*')            // --input when it is a samplesheet CSV, or []
    path(input_schema)                                     // assets/schema_input.json

    output:
    stdout emit: ok                                        // only gates the slide tasks; never part of their inputs
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // Validated offline with Python jsonschema (nf-schema needs the plugin registry): undeclared or ill-typed
    // parameters and incompatible slide encoders stop the run here, before any slide task starts.
    def args   = task.ext.args ?: ''
    def plugin = [plugins].flatten().collect { p -> "--feature-plugin ${p}" }.join(' ')   // staged: escaped by Nextflow
    def sheet  = samplesheet ? "--samplesheet ${samplesheet} --input-schema ${input_schema}" : ''
    """
    cat <<'END_PARAMS' > params.json
    ${params_json}
    END_PARAMS
    atlaspatch check-params params.json --schema ${schema} ${sheet} ${plugin} ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        atlaspatch: \$(atlaspatch --version | sed 's/^atlaspatch //')
    END_VERSIONS
    """

    stub:
    """
    echo 'parameters OK (stub)'

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        atlaspatch: \$(atlaspatch --version | sed 's/^atlaspatch //')
    END_VERSIONS
    """
}
