# Loaded by the moto server that test/harness/moto.ts starts (PYTHONPATH): corrections to moto
# where it behaves unlike AWS, applied when moto loads the module concerned.
#
# EC2 tags. moto finds one resource's tags by scanning every tag of every resource with a regular
# expression (describe_tags with a resource-id filter), and does so for each resource a filter on
# tags looks at: DescribeVolumes by a name tag over 500 volumes with five tags each makes 1.25
# million matches and took 590 ms (3 ms with this). EC2 answers it from an index. Here a resource's
# tags are read from moto's own table by its id: the same list, in the same order, as the scan
# gave (the scan's pattern matches the id exactly). Without this, npm run bench measured moto's
# scan rather than the drivers (the driver looks a volume's name up by its tag before creating it).
import importlib.abc
import importlib.util
import sys

_TAGGED = "moto.ec2.models.core"


def _tags_by_id(self):
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    if not self.id:
        return []
    # .get: the table is a defaultdict, and a lookup must not add an entry.
    tags = self.ec2_backend.tags.get(self.id)
    if not tags:
        return []
    resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
    return [
        {"resource_id": self.id, "key": key, "value": value, "resource_type": resource_type}
        for key, value in tags.items()
    ]


class _PatchOnLoad(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TAGGED:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.TaggedEC2Resource.get_tags = _tags_by_id

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchOnLoad())
