"""One module per Kafka API: ``API_KEY``, ``API_VERSIONS = (min, max)`` and
``async def handle_<api>(ctx, req)`` (see ``..dispatch`` for the contract)."""

from . import (
    alter_configs,
    api_versions,
    create_partitions,
    create_topics,
    delete_topics,
    describe_configs,
    fetch,
    find_coordinator,
    incremental_alter_configs,
    init_producer_id,
    list_offsets,
    metadata,
    produce,
)

MODULES = (
    produce,
    fetch,
    list_offsets,
    metadata,
    find_coordinator,
    api_versions,
    create_topics,
    delete_topics,
    init_producer_id,
    describe_configs,
    alter_configs,
    create_partitions,
    incremental_alter_configs,
)
