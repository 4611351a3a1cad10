process SEGMENT {
    tag "${meta.id}"
    label 'process_low'
    label 'process_gpu'

    input:
    tuple val(meta), path(slide), path(previous, stageAs: 'previous/*')   // previous: the H5 published by an earlier run, or []
    path(model_dir, stageAs: 'atlaspatch_models/*')        // weights directory (DIR/<model>/<file>), or [] for none
    path(mpp_csv)

    output:
    tuple val(meta), path("patches/${meta.id}.h5"), emit: h5
    path "versions.yml"                          , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // The slide as the tool sees it: named after meta.id (a samplesheet id may differ from the file's stem), so the
    // H5 is patches/<id>.h5. A samplesheet mpp overrides the slide's.
    def suffix = slide.name.lastIndexOf('.') > 0 ? slide.name.substring(slide.name.lastIndexOf('.')) : ''
    def mppArg = meta.mpp ? "--mpp ${meta.mpp}" : ''
    def args   = task.ext.args ?: ''
    def models = model_dir ? "--model-dir '${model_dir}'" : ''
    def mpp    = mpp_csv ? "--mpp-csv '${mpp_csv}'" : ''
    def prev   = previous ? "--h5 '${previous}'" : ''   // reused under the CLI's rules by every later stage
    """
    if [ -d '${slide}' ]; then wsi='${meta.id}'; else wsi='${meta.id}${suffix}'; fi
    [ "\$wsi" = '${slide}' ] || ln -sfn '${slide}' "\$wsi"
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
    touch 'patches/${meta.id}.h5'

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        atlaspatch: \$(atlaspatch --version | sed 's/^atlaspatch //')
    END_VERSIONS
    """
}
