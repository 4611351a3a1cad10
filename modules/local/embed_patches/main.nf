process EMBED_PATCHES {
    tag "${meta.id}"
    label 'process_medium'
    label 'process_gpu'

    input:
    tuple val(meta), path(slide), path(h5)
    path(model_dir, stageAs: 'atlaspatch_models/*')        // weights directory (DIR/<model>/<file>), or [] for none
    path(plugins  , stageAs: 'atlaspatch_plugins*/*')      // --feature-plugin files, or [] for none
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
    // The staged input H5 (<stem>.h5 at the task root) is never modified: the tool writes a new
    // patches/<stem>.h5 that starts as a copy of it plus features/<encoder> (copy-on-write between stages).
    // The model dir and plugin files are staged under their own folders, so no name of theirs can clash with the
    // slide, the input H5 or patches/. Each plugin file sits in a folder of its own (two may share a name).
    def args    = task.ext.args ?: ''
    def models  = model_dir ? "--model-dir '${model_dir}'" : ''
    def plugin  = [plugins].flatten().collect { p -> "--feature-plugin '${p}'" }.join(' ')
    def mpp     = mpp_csv ? "--mpp-csv '${mpp_csv}'" : ''
    """
    if [ -d '${slide}' ]; then wsi='${meta.id}'; else wsi='${meta.id}${suffix}'; fi
    [ "\$wsi" = '${slide}' ] || ln -sfn '${slide}' "\$wsi"
    atlaspatch embed-patches \\
        --slide "\$wsi" \\
        --h5 '${h5}' \\
        --output . \\
        ${models} \\
        ${plugin} \\
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
