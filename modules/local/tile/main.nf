process TILE {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(slide), path(h5)
    path(mpp_csv)

    output:
    tuple val(meta), path("patches/${meta.id}.h5")     , emit: h5
    tuple val(meta), path("images/${meta.id}")         , emit: images       , optional: true
    tuple val(meta), path("visualization/*")           , emit: visualization, optional: true
    path "versions.yml"                                , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // The slide as the tool sees it: named after meta.id (a samplesheet id may differ from the file's stem), so the
    // H5 is patches/<id>.h5. A samplesheet mpp overrides the slide's.
    def suffix = slide.name.lastIndexOf('.') > 0 ? slide.name.substring(slide.name.lastIndexOf('.')) : ''
    def mppArg = meta.mpp ? "--mpp ${meta.mpp}" : ''
    // The staged input H5 (<stem>.h5 at the task root) is never modified: the tool writes a new
    // patches/<stem>.h5 that starts as a copy of it (copy-on-write between stages).
    def args = task.ext.args ?: ''
    def mpp  = mpp_csv ? "--mpp-csv '${mpp_csv}'" : ''
    """
    if [ -d '${slide}' ]; then wsi='${meta.id}'; else wsi='${meta.id}${suffix}'; fi
    [ "\$wsi" = '${slide}' ] || ln -sfn '${slide}' "\$wsi"
    atlaspatch tile "\$wsi" \\
        --h5 '${h5}' \\
        --output . \\
        ${mpp} \\
        ${mppArg} \\
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
