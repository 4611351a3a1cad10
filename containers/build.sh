#!/usr/bin/env bash
# Build the atlaspatch-nf container images (CPU and CUDA) and, on request, push them and make Singularity/Apptainer
# images from them. See docs/containers.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: containers/build.sh [options]

Builds containers/Dockerfile, with the repository root as context, into two images:
  CPU   atlaspatch-nf/atlaspatch:<version>        (params.container_cpu)  torch from PyTorch's CPU wheel index
  CUDA  atlaspatch-nf/atlaspatch:<version>-cuda   (params.container_gpu)  torch from PyPI (the CUDA build, with
                                                                          the CUDA runtime and cuDNN as wheels)
<version> is the package version in pyproject.toml.

Options:
  --cpu                 build only the CPU image
  --cuda                build only the CUDA image
  --base IMAGE          base image (default python:3.11-slim-bookworm); any image with Python 3.11 as `python`
  --torch-index URL     where torch comes from, for every image built (default: the CPU index for the CPU
                        image, PyPI for the CUDA one). A CPU image given a non-CPU index (e.g. PyPI, where the
                        Linux wheel is the CUDA build) carries CUDA torch, and its build check expects that.
  --pip-cache DIR       mount DIR as pip's cache during the build (podman only), so torch is downloaded once
  --host-network        build with --network=host and the host's CA certificates mounted (podman only): for
                        machines that reach PyPI only through a proxy whose CA the host trusts
  --push REGISTRY       also tag the images as REGISTRY/atlaspatch-nf/atlaspatch:<tag> and push them
                        (log in first); run the pipeline with --container_cpu/--container_gpu set to those names
  --sif                 also write Singularity/Apptainer images, named as Nextflow's image cache expects
                        (atlaspatch-nf-atlaspatch-<tag>.img), into --sif-dir
  --sif-dir DIR         where --sif writes (default: $NXF_SINGULARITY_CACHEDIR, else $NXF_APPTAINER_CACHEDIR,
                        else containers/sif); point NXF_SINGULARITY_CACHEDIR (or NXF_APPTAINER_CACHEDIR) at it
  --no-cache            build without the engine's layer cache
  --print-tags          print the image names this would build, one per line, and exit
  --dry-run             print the commands instead of running them
  -h, --help            this text

Environment:
  CONTAINER_ENGINE      docker (default) or podman
  SIF_BUILDER           apptainer or singularity (default: whichever is on PATH, apptainer first)
  IMAGE_NAME            repository of the images (default atlaspatch-nf/atlaspatch; the pipeline's
                        params.container_cpu/container_gpu use the default)
EOF
}

die() { echo "build.sh: $*" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENGINE="${CONTAINER_ENGINE:-docker}"
IMAGE_NAME="${IMAGE_NAME:-atlaspatch-nf/atlaspatch}"

build_cpu=1 build_cuda=1 push_registry="" want_sif=0 sif_dir="" no_cache=() print_tags=0 dry_run=0
only="" base_image="" torch_index="" pip_cache="" host_network=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) [ "$only" = cuda ] && die "--cpu and --cuda together: leave both out to build both"; only=cpu ;;
    --cuda) [ "$only" = cpu ] && die "--cpu and --cuda together: leave both out to build both"; only=cuda ;;
    --push) [ $# -ge 2 ] && [ -n "$2" ] || die "--push needs a registry, e.g. --push ghcr.io/my-org"
            push_registry="${2%/}"; shift ;;
    --push=*) push_registry="${1#--push=}"; push_registry="${push_registry%/}"; [ -n "$push_registry" ] || die "--push needs a registry" ;;
    --base) [ $# -ge 2 ] && [ -n "$2" ] || die "--base needs an image"; base_image="$2"; shift ;;
    --base=*) base_image="${1#--base=}"; [ -n "$base_image" ] || die "--base needs an image" ;;
    --torch-index) [ $# -ge 2 ] && [ -n "$2" ] || die "--torch-index needs a URL"; torch_index="$2"; shift ;;
    --torch-index=*) torch_index="${1#--torch-index=}"; [ -n "$torch_index" ] || die "--torch-index needs a URL" ;;
    --pip-cache) [ $# -ge 2 ] && [ -n "$2" ] || die "--pip-cache needs a directory"; pip_cache="$2"; shift ;;
    --pip-cache=*) pip_cache="${1#--pip-cache=}"; [ -n "$pip_cache" ] || die "--pip-cache needs a directory" ;;
    --host-network) host_network=1 ;;
    --sif) want_sif=1 ;;
    --sif-dir) [ $# -ge 2 ] && [ -n "$2" ] || die "--sif-dir needs a directory"; sif_dir="$2"; want_sif=1; shift ;;
    --sif-dir=*) sif_dir="${1#--sif-dir=}"; want_sif=1 ;;
    --no-cache) no_cache=(--no-cache) ;;
    --print-tags) print_tags=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
  shift
done
case "$only" in cpu) build_cuda=0 ;; cuda) build_cpu=0 ;; esac
case "$ENGINE" in docker|podman) ;; *) die "CONTAINER_ENGINE must be docker or podman, not '$ENGINE'" ;; esac
if [ "$ENGINE" != podman ]; then
  [ -z "$pip_cache" ] || die "--pip-cache needs CONTAINER_ENGINE=podman (docker build mounts no volumes)"
  [ "$host_network" = 0 ] || die "--host-network needs CONTAINER_ENGINE=podman (docker build mounts no volumes)"
fi

# The package version: `version = "..."` of the [project] table in pyproject.toml
VERSION="$(awk '
  /^\[/ { in_project = ($0 == "[project]") }
  in_project && /^version[[:space:]]*=/ { sub(/^version[[:space:]]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit }
' "$ROOT/pyproject.toml")"
[ -n "$VERSION" ] || die "no version in the [project] table of $ROOT/pyproject.toml"

CPU_INDEX=https://download.pytorch.org/whl/cpu
PYPI_INDEX=https://pypi.org/simple
# (tag, torch index, torch flavour) triples to build; the flavour is what the image's build check asserts
targets=()
if [ "$build_cpu" = 1 ]; then
  index="${torch_index:-$CPU_INDEX}"
  case "$index" in */whl/cpu | */whl/cpu/) flavour=cpu ;; *) flavour=cuda ;; esac
  targets+=("$VERSION" "$index" "$flavour")
fi
[ "$build_cuda" = 1 ] && targets+=("$VERSION-cuda" "${torch_index:-$PYPI_INDEX}" cuda)

if [ "$print_tags" = 1 ]; then
  for ((i = 0; i < ${#targets[@]}; i += 3)); do echo "$IMAGE_NAME:${targets[i]}"; done
  exit 0
fi

run() {
  if [ "$dry_run" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

if [ "$dry_run" = 0 ]; then
  command -v "$ENGINE" >/dev/null || die "$ENGINE not found (set CONTAINER_ENGINE=docker|podman)"
fi
sif_builder=""
if [ "$want_sif" = 1 ]; then
  sif_builder="${SIF_BUILDER:-}"
  if [ -z "$sif_builder" ]; then
    if command -v apptainer >/dev/null; then sif_builder=apptainer
    elif command -v singularity >/dev/null; then sif_builder=singularity
    elif [ "$dry_run" = 1 ]; then sif_builder=apptainer
    else die "--sif needs apptainer or singularity on PATH (or SIF_BUILDER)"
    fi
  fi
  sif_dir="${sif_dir:-${NXF_SINGULARITY_CACHEDIR:-${NXF_APPTAINER_CACHEDIR:-$ROOT/containers/sif}}}"
fi

vcs_ref="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true)"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
built=()

engine_opts=()
[ -n "$base_image" ] && engine_opts+=(--build-arg "BASE_IMAGE=$base_image")
if [ -n "$pip_cache" ]; then
  [ "$dry_run" = 1 ] || mkdir -p "$pip_cache"
  pip_cache="$(cd "$pip_cache" 2>/dev/null && pwd || echo "$pip_cache")"
  engine_opts+=(-v "$pip_cache:/var/cache/pip-host" --build-arg "PIP_CACHE_DIR=/var/cache/pip-host")
fi
[ "$host_network" = 1 ] && engine_opts+=(--network=host -v /etc/ssl/certs:/etc/ssl/certs:ro)

for ((i = 0; i < ${#targets[@]}; i += 3)); do
  tag="${targets[i]}" index="${targets[i + 1]}" flavour="${targets[i + 2]}"
  image="$IMAGE_NAME:$tag"
  echo "build.sh: $image (torch: the $flavour build from $index; $ENGINE)" >&2
  if [ "$flavour" = cuda ] && [ "$tag" = "$VERSION" ]; then
    echo "build.sh: note: the CPU image gets CUDA torch from $index (about 8 GB; it runs on CPUs all the same)" >&2
  fi
  run "$ENGINE" build ${no_cache[@]+"${no_cache[@]}"} ${engine_opts[@]+"${engine_opts[@]}"} \
    -f "$ROOT/containers/Dockerfile" \
    -t "$image" \
    --build-arg "TORCH_INDEX_URL=$index" \
    --build-arg "TORCH_FLAVOUR=$flavour" \
    --build-arg "ATLASPATCH_VERSION=$VERSION" \
    --build-arg "VCS_REF=$vcs_ref" \
    --build-arg "BUILD_DATE=$build_date" \
    "$ROOT"
  built+=("$image")

  if [ -n "$push_registry" ]; then
    remote="$push_registry/$image"
    run "$ENGINE" tag "$image" "$remote"
    run "$ENGINE" push "$remote"
    built+=("$remote")
  fi

  if [ "$want_sif" = 1 ]; then
    # Nextflow's cache name for the image (SingularityCache.simpleName): '/' and ':' become '-', plus .img
    sif="$sif_dir/$(printf '%s' "$image" | tr '/:' '--').img"
    archive="$sif_dir/.$(printf '%s' "$image" | tr '/:' '--').tar"
    run mkdir -p "$sif_dir"
    if [ "$ENGINE" = podman ]; then
      run podman save --format docker-archive -o "$archive" "$image"
    else
      run docker save -o "$archive" "$image"
    fi
    run "$sif_builder" build --force "$sif" "docker-archive://$archive"
    run rm -f "$archive"
    built+=("$sif")
  fi
done

echo "build.sh: done" >&2
printf '  %s\n' "${built[@]}" >&2
if [ -n "$push_registry" ]; then
  echo "build.sh: run the pipeline with --container_cpu $push_registry/$IMAGE_NAME:$VERSION --container_gpu $push_registry/$IMAGE_NAME:$VERSION-cuda" >&2
fi
if [ "$want_sif" = 1 ]; then
  echo "build.sh: export NXF_SINGULARITY_CACHEDIR=$sif_dir (or NXF_APPTAINER_CACHEDIR) and run with -profile singularity (or apptainer)" >&2
fi
