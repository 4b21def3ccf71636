"""Removes a run's container once the runner that started it is gone.

Started by the runner as ``python -m prefect_mltrain.compute.reaper FD BASE_URL ID`` with
the read end of a ``Lifeline`` as FD: when the runner ends for any reason (even SIGKILL)
the pipe closes and the container is removed, so a lost runner never leaves a training
container behind.
"""

import sys

from .jobs import wait_for_cut


def main() -> None:
    fd, base_url, container_id = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    wait_for_cut(fd)
    import docker

    client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
    try:
        client.containers.get(container_id).remove(force=True)
    except docker.errors.NotFound:
        pass


if __name__ == "__main__":
    main()
