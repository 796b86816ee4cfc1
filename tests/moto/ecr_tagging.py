"""moto 5.2's Resource Groups Tagging API does not list ECR repositories (its ECR backend does not take part
in GetResources), while AWS lists them like any other tagged resource: a tagged repository then looks
untagged to a batched tag read, and a resync reads each repository's tags on its own. This adds the
account's repositories, with their tags, to GetResources under the same tag, type and ARN filters moto
applies to the services it does list."""

from supported import require


def install():
    require("ecr_tagging")
    from moto.core.resource_tagging import TaggedResource, make_tag_matcher, match_resource_type
    from moto.ecr.models import ecr_backends
    from moto.resourcegroupstaggingapi.models import ResourceGroupsTaggingAPIBackend

    original = ResourceGroupsTaggingAPIBackend._get_resources_generator

    def repositories(self, tag_filters=None, resource_type_filters=None, resource_arn_list=None):
        if self.account_id not in ecr_backends:
            return
        regional = ecr_backends[self.account_id]
        if self.region_name not in regional:
            return
        backend = regional[self.region_name]
        matches_tags = make_tag_matcher(tag_filters)
        for repository in list(backend.repositories.values()):
            tags = backend.tagger.get_tag_dict_for_resource(repository.arn)
            if not tags or not matches_tags(tags):
                continue
            if not match_resource_type("ecr:repository", resource_type_filters):
                continue
            if resource_arn_list and repository.arn not in resource_arn_list:
                continue
            yield TaggedResource(arn=repository.arn, tags=tags, resource_type="ecr:repository")

    def with_repositories(self, tag_filters=None, resource_type_filters=None, resource_arn_list=None):
        yield from original(self, tag_filters, resource_type_filters, resource_arn_list)
        yield from repositories(self, tag_filters, resource_type_filters, resource_arn_list)

    ResourceGroupsTaggingAPIBackend._get_resources_generator = with_repositories
