process SEGMENT {
    tag "${meta.id}"
    label 'process_low'
    label 'process_gpu'

    input:
    tuple val(meta), path(slide, stageAs: 'slide/*'), path(previous, stageAs: 'previous/*')   // previous: the H5 published by an earlier run, or []
    path(model_dir, stageAs: 'atlaspatch_models/*')        // weights directory (DIR/<model>/<file>), or [] for none
    path(mpp_csv  , stageAs: 'mpp_csv/*')                // --mpp_csv, or []

    output:
    tuple val(meta), path("patches/${meta.id}.h5"), emit: h5
    path "versions.yml"                          , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // The slide is staged under slide/ (no name of a slide's can clash with patches/ or start an option) and the tool
    // reads it through wsi/<id><suffix>, so that the H5 is patches/<id>.h5 (a samplesheet id may differ from the
    // file's stem). Staged paths go into the script unquoted: Nextflow escapes them. A samplesheet mpp overrides the
    // slide's.
    def name   = slide.name.substring(slide.name.lastIndexOf('/') + 1)   // the staged name is slide/<file>
    def suffix = name.lastIndexOf('.') > 0 ? name.substring(name.lastIndexOf('.')) : ''
    def mppArg = meta.mpp ? "--mpp ${meta.mpp}" : ''
    def args   = task.ext.args ?: ''
    def models = model_dir ? "--model-dir ${model_dir}" : ''
    def mpp    = mpp_csv ? "--mpp-csv ${mpp_csv}" : ''
    def prev   = previous ? "--h5 ${previous}" : ''   // reused under the CLI's rules by every later stage
    """
    mkdir -p wsi
    if [ -d ${slide} ]; then wsi=${ShellWords.quote("wsi/${meta.id}")}; else wsi=${ShellWords.quote("wsi/${meta.id}${suffix}")}; fi
    ln -s ../${slide} "\$wsi"
    atlaspatch segment "\$wsi" \\
        --output . \\
        ${models} \\
        ${mpp} \\
        ${mppArg} \\
        ${prev} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        atlaspatch: \$(atlaspatch --version | sed 's/^atlaspatch //')
    END_VERSIONS
    """

    stub:
    """
    mkdir -p patches
    touch ${ShellWords.quote("patches/${meta.id}.h5")}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        atlaspatch: \$(atlaspatch --version | sed 's/^atlaspatch //')
    END_VERSIONS
    """
}
