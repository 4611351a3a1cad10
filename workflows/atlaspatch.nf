/*
 * ATLASPATCH: the per-slide stage chain. Each stage is one process per slide (meta.id = slide stem) that
 * calls one `atlaspatch` stage command, reads the previous stage's H5 and writes a new one (copy-on-write).
 *     SEGMENT -> TILE [-> EMBED_PATCHES, with --patch_encoders]
 * Adding a stage = one module + one line here, e.g.
 *     ENCODE_SLIDE  ( EMBED_PATCHES.out.h5 )             // tuple(meta, h5)        -> tuple(meta, h5)
 * and pointing `ch_h5` at the new last stage. Only the last stage's H5 is published (conf/modules.config).
 */

include { SEGMENT       } from '../modules/local/segment/main'
include { TILE          } from '../modules/local/tile/main'
include { EMBED_PATCHES } from '../modules/local/embed_patches/main'

workflow ATLASPATCH {

    take:
    ch_slides   // channel: [ val(meta), path(slide) ]   (a slide file or a DICOM series folder)
    mpp_csv     // value:   path(csv) or [] (no --mpp-csv)
    model_dir   // value:   path(dir) or [] (no --model_dir): weights for SEGMENT/EMBED_PATCHES, staged into tasks
    plugins     // value:   [ path(py), ... ] or [] (no --feature_plugin): files registering patch encoders

    main:
    SEGMENT ( ch_slides, model_dir, mpp_csv )
    TILE    ( ch_slides.join(SEGMENT.out.h5), mpp_csv )

    ch_h5 = TILE.out.h5

    ch_versions = channel.empty()
        .mix(SEGMENT.out.versions.first())
        .mix(TILE.out.versions.first())

    // Stage 3, only with --patch_encoders: features/<encoder> for every patch
    if( params.patch_encoders ) {
        EMBED_PATCHES ( ch_slides.join(ch_h5), model_dir, plugins, mpp_csv )
        ch_h5       = EMBED_PATCHES.out.h5
        ch_versions = ch_versions.mix(EMBED_PATCHES.out.versions.first())
    }

    ch_versions
        .collectFile(name: 'atlaspatch_software_versions.yml', storeDir: "${params.outdir}/pipeline_info",
                     sort: true, newLine: false)

    emit:
    h5            = ch_h5                 // channel: [ val(meta), path(h5) ] the last stage's per-slide H5
    images        = TILE.out.images       // channel: [ val(meta), path(images/<stem>) ]
    visualization = TILE.out.visualization
    versions      = ch_versions           // channel: [ path(versions.yml) ]
}
